#!/usr/bin/env bash
# Creates (once) a Python venv with pyspark for the batch-reader tests and prints
# the path of its python. Cached under ~/.cache/conduit (override with
# CONDUIT_CACHE), so only the first run downloads pyspark (~430 MB from PyPI).
#
#   scripts/pyspark-venv.sh [VERSION]     # default 4.0.1
#   export CONDUIT_PYSPARK4="$(scripts/pyspark-venv.sh)"
#   export CONDUIT_PYSPARK35="$(scripts/pyspark-venv.sh 3.5.7)"  # py4j from PyPI
#
# Spark needs Java 17+ on PATH (or JAVA_HOME).
set -euo pipefail
version="${1:-4.0.1}"
cache="${CONDUIT_CACHE:-$HOME/.cache/conduit}"
venv="$cache/venv-pyspark-$version"
if ! "$venv/bin/python" -c 'import pyspark' >/dev/null 2>&1; then
  mkdir -p "$cache/pip"
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  sdist="$cache/pip/pyspark-$version.tar.gz"
  if [ ! -f "$sdist" ]; then
    "$venv/bin/pip" download -q --no-deps "pyspark==$version" -d "$cache/pip" >&2
  fi
  "$venv/bin/pip" install -q "$sdist" >&2
  "$venv/bin/python" -c 'import pyspark' >&2
fi
echo "$venv/bin/python"
