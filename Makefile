# fraudray — `make help` lists the targets.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
export RAY_AUTH_MODE := token
export PATH := $(CURDIR)/$(BIN):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup run test lint format stack-up stack-down stack-status clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: ## install Debian packages, .venv and the Kafka jars (idempotent, fast when warm)
	@bash cluster/setup.sh

run: setup ## the main job: local stack + Ray + Serve + consumers + producer, live (Ctrl-C stops)
	@$(BIN)/fraudray demo

test: setup ## lint, type-check and the whole test suite on the real local stack
	@bash cluster/run_tests.sh

lint: setup ## ruff (lint + format check) and mypy
	@$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy . && $(BIN)/lint-imports --no-cache

format: setup ## apply ruff's formatting and safe fixes
	@$(BIN)/ruff format . && $(BIN)/ruff check --fix .

stack-up: setup ## start the local stack only
	@$(BIN)/fraudray stack up

stack-down: ## stop the local stack
	@$(BIN)/fraudray stack down

stack-status: ## show the local stack's services
	@$(BIN)/fraudray stack status

clean: stack-down ## stop everything and delete var/ (data, logs, models, Kafka jars)
	-@$(BIN)/ray stop --force >/dev/null 2>&1
	rm -rf var
