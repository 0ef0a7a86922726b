#!/usr/bin/env bash
# ./run.sh        set up (.venv) and train the default ViT on the embedded digits dataset.
# ./run.sh test   set up (.venv with the test extra) and run the test suite.
# Extra arguments go to main.py (or to pytest with 'test').
set -euo pipefail
cd "$(dirname "$0")"

setup() {  # Installs into .venv; re-installs only when setup.cfg changed.
  local target=. stamp=.venv/.installed-main
  if [ -n "$1" ]; then target=".[$1]"; stamp=".venv/.installed-$1"; fi
  [ -x .venv/bin/python ] || python3 -m venv .venv
  if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e "$target"
    touch "$stamp"
  fi
}

if [ "${1:-}" = test ]; then
  shift
  setup test
  # One worker per core (at most 4: each holds JAX with 8 simulated devices); -n 0 for none.
  exec .venv/bin/python -m pytest -n auto --maxprocesses=4 --dist worksteal "$@"
fi
setup ""
exec .venv/bin/python main.py --config=configs/vit.py --workdir="${WORKDIR:-workdir/vit_digits}" "$@"
