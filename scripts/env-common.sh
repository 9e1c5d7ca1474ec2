# Shared settings of scripts/setup-env and scripts/in-env (sourced, not run).
# The environment lives outside the clone, keyed by the lock file, so every clone reuses it.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_HOME="${AUTORECSYS_ENV_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/autorecsys}"
LOCK_FILE="$REPO_ROOT/requirements.lock"
LOCK_HASH="$(sha256sum "$LOCK_FILE" | cut -c1-16)"
# TFX 1.21's ml-metadata and tensorflow-data-validation wheels need glibc >= 2.38 and a new libstdc++.
glibc_version="$(getconf GNU_LIBC_VERSION 2>/dev/null)"; glibc_version="${glibc_version##* }"
if [ -n "${AUTORECSYS_ENV_MODE:-}" ]; then
  ENV_MODE="$AUTORECSYS_ENV_MODE"
elif [ "${glibc_version%%.*}" -gt 2 ] 2>/dev/null \
  || { [ "${glibc_version%%.*}" = 2 ] && [ "${glibc_version#*.}" -ge 39 ] 2>/dev/null; }; then
  ENV_MODE=venv
else
  ENV_MODE=root
fi
ROOT_DIR="$ENV_HOME/trixie-root"
if [ "$ENV_MODE" = root ]; then
  VENV_IN_ROOT="/opt/autorecsys/venv-$LOCK_HASH"  # path as seen inside the root
  VENV_HOST="$ROOT_DIR$VENV_IN_ROOT"
else
  VENV_IN_ROOT=""
  VENV_HOST="$ENV_HOME/venv-$LOCK_HASH"
fi
