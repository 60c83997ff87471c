# refdet-edge: `make demo` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export YOLO_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Pretrained YOLOv8n weights make the short demo schedule learn far more; any ultralytics yolov8n.pt will do.
# Without one the demo still runs, from random weights.
YOLO_WEIGHTS ?= $(wildcard ../shared/weights/yolov8n-coco.pt)
DEMO_RUNS ?= runs/demo
REFDET := $(VENV)/bin/refdet

demo: $(STAMP)
	test -f demo_data/annotations/annotations.json || $(REFDET) data synth --out demo_data
	$(REFDET) train --config configs/demo.yaml --stage 1 --epochs 6 --lr 2e-3 \
		$(if $(YOLO_WEIGHTS),--yolo-weights $(YOLO_WEIGHTS)) --out $(DEMO_RUNS)/stage1
	$(REFDET) train --config configs/demo.yaml --stage 2 --epochs 2 \
		--weights $(DEMO_RUNS)/stage1/best.pt --out $(DEMO_RUNS)/stage2
	$(REFDET) train --config configs/demo.yaml --stage 3 --epochs 3 --use-triplet --triplet-ratio 0.5 \
		--triplet-weight 0.5 --weights $(DEMO_RUNS)/stage2/best.pt --out $(DEMO_RUNS)/stage3
	$(REFDET) eval --weights $(DEMO_RUNS)/stage3/best.pt --data demo_data --split val --out $(DEMO_RUNS)/eval

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
