# refdet-edge: `make demo` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
YOLO_OFFLINE ?= 1
export YOLO_OFFLINE
export MPLBACKEND := Agg

.PHONY: demo test test-fast bench lint clean unseen baseline real

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The demo: a small synthetic set (small frames, large targets, few look-alikes) and a short schedule that
# learns from random weights in minutes (configs/demo.yaml). It starts from COCO YOLOv8n weights when there are
# some (configs/demo-coco.yaml): YOLO_WEIGHTS=path/to/yolov8n.pt, else ../shared/weights/yolov8n-coco.pt, else
# ultralytics' download of yolov8n.pt, which it tries only with YOLO_OFFLINE=0 and a network
# (refdet_edge/demo/yolo.py). One training stage; it keeps best.pt and removes the resumable last.pt.
YOLO_WEIGHTS ?=
SHARED_YOLO := ../shared/weights/yolov8n-coco.pt
DEMO_DATA ?= demo_data
DEMO_RUNS ?= runs/demo
DEMO_CONFIG ?= configs/demo.yaml
DEMO_COCO_CONFIG ?= configs/demo-coco.yaml
DEMO_SYNTH := --videos 6 --frames 200 --frame-size 640x360 --target-size 32-88 --look-alikes 1-2 --seed 0
REFDET := $(VENV)/bin/refdet
DEMO_MODEL := $(DEMO_RUNS)/stage1/best.pt

demo: $(STAMP)
	test "$$(cat $(DEMO_DATA)/.synth_args 2>/dev/null)" = "$(DEMO_SYNTH)" || { rm -rf $(DEMO_DATA) && \
		$(REFDET) data synth --out $(DEMO_DATA) $(DEMO_SYNTH) && echo "$(DEMO_SYNTH)" > $(DEMO_DATA)/.synth_args; }
	rm -rf $(DEMO_RUNS) && mkdir -p $(DEMO_RUNS)
	$(PY) -m refdet_edge.demo.yolo --given "$(YOLO_WEIGHTS)" --shared $(SHARED_YOLO) \
		--cache runs/weights/yolov8n.pt > $(DEMO_RUNS)/yolo_weights.txt
	W=$$(cat $(DEMO_RUNS)/yolo_weights.txt); $(REFDET) train --data $(DEMO_DATA) --stage 1 --out $(DEMO_RUNS)/stage1 \
		$$(test -n "$$W" && echo --config $(DEMO_COCO_CONFIG) --yolo-weights "$$W" || echo --config $(DEMO_CONFIG))
	rm -f $(DEMO_RUNS)/stage1/last.pt
	$(REFDET) eval --weights $(DEMO_MODEL) --data $(DEMO_DATA) --split val --out $(DEMO_RUNS)/eval
	V=$$(ls $(DEMO_DATA)/samples | head -n 1); $(REFDET) predict --weights $(DEMO_MODEL) \
		--refs $(DEMO_DATA)/samples/$$V/object_images --video $(DEMO_DATA)/samples/$$V/frames \
		--out $(DEMO_RUNS)/predict && $(PY) -m refdet_edge.demo.summary --eval $(DEMO_RUNS)/eval \
		--clip $(DEMO_RUNS)/predict/$$V.mp4

# Real footage from ../shared/data (UAV123, DTB70, UAVDT, LaSOT and OTB sequences, never in this repository).
# `make unseen`: the object split behind the README's figures (7 test objects never trained on, 4 validation
# objects that choose best.pt and the operating point), stages 1-3 of configs/unseen.yaml for one encoder
# (ENCODER=mobilenetv2, siamese or dinov2), then eval of stage 2 and stage 3 on the unseen test objects, of
# stage 2 on the validation objects and on the training part of the training objects (the raw detections
# benchmarks/temporal_sweep.py reads) and of stage 3 on the later frames of the training objects.
# `make baseline`: the two-stage baseline on the same split. `make real`: the model to try on new footage, the
# same schedule on every object (none held out).
SHARED_DATA ?= ../shared/data
SHARED_WEIGHTS ?= ../shared/weights
SOT_SEQUENCES = $(wildcard $(SHARED_DATA)/sot/*/) $(wildcard $(SHARED_DATA)/sot_more/*/)
IMPORT := --thin-to 100 --absent-ratio 0.6
ENCODER ?= mobilenetv2
VERIFY_SCALE ?= 2
ENC_mobilenetv2 := --support-encoder timm:mobilenetv2_100 --support-size 224 --verify-topk 8 \
	--verify-scale $(VERIFY_SCALE) \
	--support-weights $(SHARED_WEIGHTS)/mobilenetv2_100-imagenet.safetensors
ENC_siamese := --support-encoder siamese --support-size 128
ENC_dinov2 := --support-encoder dinov2 --support-size 224
UNSEEN_RUNS ?= runs/unseen/$(ENCODER)
BASELINE_RUNS ?= runs/unseen/baseline
TRAIN = $(REFDET) train --config configs/unseen.yaml $(ENC_$(ENCODER))

real_data/unseen/splits.json: | $(STAMP)
	$(REFDET) data import-sot $(SOT_SEQUENCES) --out real_data/unseen --split-by object $(IMPORT) \
		--test-objects boat1,truck4,person11,wakeboard7,Animal3,building5,MountainBike6 \
		--val-objects group1_1,S0601,Biker,Dog1

real_data/all/splits.json: | $(STAMP)
	$(REFDET) data import-sot $(SOT_SEQUENCES) --out real_data/all --split-by time $(IMPORT)

# The three stages of one run folder R on data D: 1 base, 2 meta (+ the last support blocks), 3 fine-tune with
# triplet batches, each from the previous stage's best.pt.
.PRECIOUS: %/stage1/best.pt %/stage2/best.pt
%/stage1/best.pt:
	$(TRAIN) --data $(DATA) --stage 1 --out $*/stage1
%/stage2/best.pt: %/stage1/best.pt
	$(TRAIN) --data $(DATA) --stage 2 --weights $< --out $*/stage2
%/stage3/best.pt: %/stage2/best.pt
	$(TRAIN) --data $(DATA) --stage 3 --use-triplet --weights $< --out $*/stage3

unseen: DATA = real_data/unseen
unseen: $(STAMP) real_data/unseen/splits.json $(UNSEEN_RUNS)/stage3/best.pt
	for stage in 2 3; do $(REFDET) eval --weights $(UNSEEN_RUNS)/stage$$stage/best.pt --data real_data/unseen \
		--split test --out $(UNSEEN_RUNS)/eval_stage$${stage}_test || exit 1; done
	$(REFDET) eval --weights $(UNSEEN_RUNS)/stage2/best.pt --data real_data/unseen --split val \
		--out $(UNSEEN_RUNS)/eval_stage2_val
	$(REFDET) eval --weights $(UNSEEN_RUNS)/stage2/best.pt --data real_data/unseen --split train \
		--out $(UNSEEN_RUNS)/eval_stage2_train
	$(REFDET) eval --weights $(UNSEEN_RUNS)/stage3/best.pt --data real_data/unseen --split seen \
		--out $(UNSEEN_RUNS)/eval_stage3_seen

baseline: $(STAMP) real_data/unseen/splits.json
	$(PY) benchmarks/two_stage_baseline.py --data real_data/unseen --split val --out $(BASELINE_RUNS)/raw_val.json
	for split in test seen; do $(PY) benchmarks/two_stage_baseline.py --data real_data/unseen --split $$split \
		--out $(BASELINE_RUNS)/raw_$$split.json --selection $(BASELINE_RUNS)/raw_val.selection.json \
		&& $(REFDET) eval --predictions $(BASELINE_RUNS)/raw_$$split.json --data real_data/unseen --split $$split \
		--conf $$($(PY) -c "import json; print(json.load(open('$(BASELINE_RUNS)/raw_val.selection.json'))['chosen']['score_threshold'])") \
		--temporal offline --out $(BASELINE_RUNS)/eval_$$split || exit 1; done

real: DATA = real_data/all
real: $(STAMP) real_data/all/splits.json runs/real/stage3/best.pt

lint: $(STAMP)
	$(VENV)/bin/ruff check refdet_edge tests benchmarks
	$(VENV)/bin/ruff format --check refdet_edge tests benchmarks

test: lint
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m pytest benchmarks -q --benchmark-only

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks
