# Shared by the fio benchmark scripts (sourced, not run).

# need_fio INSTALL: fio on the PATH, installed from Debian's packages when
# INSTALL is 1; otherwise says how and exits 2.
need_fio() {
  command -v fio >/dev/null 2>&1 && return 0
  if [ "$1" = 1 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio
  else
    echo "fio is not installed. Install it with:  apt-get install fio" >&2
    echo "(or rerun this script with --install to let it do that)" >&2
    exit 2
  fi
}

json_get() { # json_get FILE PYTHON_EXPR_ON_d
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}
