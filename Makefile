# Two commands on a fresh machine: `make run` serves every model with the bundled weights; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
WEIGHTS ?= ../shared/weights/mobilenet_v1_0.25_224/mobilenet_v1_0.25_224.h5

.PHONY: run dev test bench domain-statistics loadtest soak recalibrate-mitosis train-mitosis-subtype train-leukocyte train-chromosome train-chromosome-detector train-metastasis train-protein train-mitosis chromosome-study mitosis-bench clean

$(BIN)/activate: requirements.txt requirements-spark.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt  # serving + Spark + test tools
	$(BIN)/pip install --quiet --no-deps -e .  # the mmax command
	touch $(BIN)/activate

run: $(BIN)/activate  ## serve on port 5000 with gunicorn (production settings)
	$(BIN)/gunicorn "app:create_app()"

dev: $(BIN)/activate  ## Flask's development server
	$(BIN)/python app.py

test: $(BIN)/activate
	$(BIN)/python -m pytest -q

bench: $(BIN)/activate  ## serving benchmark, every model: the whole request's in-process limit vs this service (default workers, one per core as memory allows, and one worker) vs the same pipeline on BentoML (its own environment, made on first use) vs a MAX-style server (bench/results.json); protein field time (bench/protein_field.json); ms per image by forward-pass size (bench/pass_size.json); the domain check's table and cost (bench/domain_check.md); one worker's memory at ready and after bursts (bench/worker_memory.json); a 20,000² slide in-process vs Spark local[1] vs local[2] (bench/slide_engines.json); the HTTP path's own cost per patch and the share of the limit it leaves (bench/http_path.json)
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.protein_field --data $(DATA)/protein/hpa2018
	$(BIN)/python -m bench.pass_size
	$(BIN)/python -m bench.domain_check --data $(DATA) --per-source 100
	$(BIN)/python -m bench.worker_memory --data $(DATA)
	$(BIN)/python -m bench.slide_engines --data $(DATA)/metastasis/pcam
	$(BIN)/python -m bench.http_path

loadtest: $(BIN)/activate  ## 2,000 requests at 32 clients against gunicorn: no errors, memory within 10 %
	$(BIN)/python -m bench.loadtest

soak: $(BIN)/activate  ## 3 minutes of mixed hostile load (largest uploads, noise, bad options, slow clients) against gunicorn: no failures, probes within 1 s, peak memory within what the settings give the workers (bench/soak.json)
	$(BIN)/python -m bench.soak

train-leukocyte: $(BIN)/activate  ## reproduce assets/leukocyte from the shared data (leave-cells-out cross-validation)
	$(BIN)/python -m core.training leukocyte --data $(DATA)/leukocyte/train --weights $(WEIGHTS) --mode ft --epochs 40 --cross-validate --no-colour-jitter

train-chromosome: $(BIN)/activate  ## reproduce assets/chromosome (leave-one-spread-out cross-validation)
	$(BIN)/python -m core.training chromosome --data $(DATA)/chromosome/metaphases --weights $(WEIGHTS) --mode ft --epochs 25 --patience 6 --folds 6 --cross-validate

train-chromosome-detector: $(BIN)/activate  ## reproduce assets/chromosome's detector (leave-one-spread-out, then all spreads)
	$(BIN)/python -m core.training.chromosome_detector --data $(DATA)/chromosome/metaphases --weights $(WEIGHTS)

train-metastasis: $(BIN)/activate  ## reproduce assets/metastasis (PatchCamelyon; its valid split is the test)
	$(BIN)/python -m core.training metastasis --data $(DATA)/metastasis/pcam --weights $(WEIGHTS) --mode ft --epochs 30 --patience 6 --input 'network_input=[144,144,3]'

train-protein: $(BIN)/activate  ## reproduce assets/protein (nested cross-validation over HPA fields, under a minute)
	$(BIN)/python -m core.training protein --data $(DATA)/protein

train-mitosis: $(BIN)/activate  ## reproduce assets/mitosis (AMi-Br crops; test = one fold of slides)
	$(BIN)/python -m core.training mitosis --data $(DATA)/mitosis --weights $(WEIGHTS) --mode ft --epochs 20 --patience 5

recalibrate-mitosis: $(BIN)/activate  ## choose the shipped mitosis weights' threshold and TTA cut-off again on the validation slides, and measure them again on the test slides
	$(BIN)/python -m core.training.recalibrate mitosis --data $(DATA)/mitosis

train-mitosis-subtype: $(BIN)/activate  ## the mitosis subtype classifier trained again on the shipped detector's split (about 20 min on 2 CPU cores), then recalibrate-mitosis
	$(BIN)/python -m core.training.recalibrate mitosis --data $(DATA)/mitosis --companions

mitosis-bench: $(BIN)/activate  ## 2,000x2,000 fields: detector vs dense sliding window (bench/mitosis_field.json)
	$(BIN)/python -m bench.mitosis_field --data $(DATA)/mitosis

chromosome-study: $(BIN)/activate  ## the crop-classifier comparison table (bench/chromosome_study.md)
	$(BIN)/python -m bench.chromosome_study --data $(DATA)/chromosome/metaphases --weights $(WEIGHTS)

domain-statistics: $(BIN)/activate  ## recompute every network model's domain-check statistics for the shipped weights (the training commands write them too)
	$(BIN)/python -m core.training.domain leukocyte --data $(DATA)/leukocyte/train
	$(BIN)/python -m core.training.domain chromosome --data $(DATA)/chromosome/metaphases
	$(BIN)/python -m core.training.domain metastasis --data $(DATA)/metastasis/pcam
	$(BIN)/python -m core.training.domain mitosis --data $(DATA)/mitosis
	$(BIN)/python -m core.training.domain protein --data $(DATA)/protein

clean:
	rm -rf $(VENV) .cache .pytest_cache
