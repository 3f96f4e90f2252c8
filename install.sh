#!/usr/bin/env bash
# Install pnp-service.
#
#   ./install.sh                 embedded mode: a virtualenv in .venv, and an example pnp-datastore.xml (mode 0600)
#   ./install.sh --dev           the same plus what the tests need (pytest, hypothesis, pyang, mypy, yanglint)
#   sudo ./install.sh --controller --python /usr/bin/python3
#                                controller mode: the package into the Python that runs clixon_server.py,
#                                the YANG into the controller's main YANG dir, the service module into
#                                the pyapi modules path, the CLI commands (show pnp...) into its clispec dir
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv"
python=""
dev=0
controller=0
controller_config=/usr/local/etc/clixon/controller.xml
yang_dir=""
modules_dir=""
clispec_dir=""
config_dir=/usr/local/etc/pnp-service
template_dir=/usr/local/share/pnp-service/templates
datastore=pnp-datastore.xml
controller_key=""

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  cat <<TXT
Options:
  --venv DIR          virtualenv to create and install into (default: $venv)
  --python PY         install into this existing Python instead of a virtualenv
                      (with --controller: the Python that runs clixon_server.py)
  --dev               also install the test needs
  --controller        also install into a Clixon controller (YANG + service module)
  --controller-config FILE
                      the controller's config file, read for its folders, socket and SSH identity
                      (default: $controller_config)
  --yang-dir DIR      controller main YANG dir (default: its CLICON_YANG_MAIN_DIR)
  --modules-dir DIR   clixon_server.py modules path (default: its CONTROLLER_PYAPI_MODULE_PATH)
  --clispec-dir DIR   where the controller's CLI reads its commands (default: its CLICON_CLISPEC_DIR)
  --template-dir DIR  where the service module reads config template-file names (default: $template_dir)
  --config-dir DIR    where the controller's public SSH key is kept for templates (default: $config_dir)
  --controller-ssh-key FILE
                      the controller's SSH public key, for templates of devices handed to it (default: the
                      .pub of its CONTROLLER_SSH_IDENTITYFILE, else of root's ~/.ssh/id_ed25519, id_ecdsa, id_rsa)
  --datastore FILE    declarations file to create from the example if missing (default: $datastore)
  -h, --help          this text
TXT
}

while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --dev) dev=1; shift ;;
    --controller) controller=1; shift ;;
    --controller-config) controller_config=$2; shift 2 ;;
    --yang-dir) yang_dir=$2; shift 2 ;;
    --modules-dir) modules_dir=$2; shift 2 ;;
    --clispec-dir) clispec_dir=$2; shift 2 ;;
    --template-dir) template_dir=$2; shift 2 ;;
    --config-dir) config_dir=$2; shift 2 ;;
    --datastore) datastore=$2; shift 2 ;;
    --controller-ssh-key) controller_key=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*"; }

# The declarations file is checked against the YANG with libyang's Python bindings, which build against
# the system's libyang (Debian: libyang2-dev) with a C compiler.
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing $* (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1; }
  else
    return 1
  fi
}
if ! pkg-config --exists libyang 2>/dev/null || ! command -v cc >/dev/null 2>&1; then
  apt_install libyang2-dev pkg-config gcc \
    || { echo "install.sh: needs libyang's headers and a C compiler: sudo apt-get install libyang2-dev pkg-config gcc (then run me again)" >&2; exit 1; }
fi

if [ -z "$python" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    say "creating virtualenv $venv"
    python3 -m venv "$venv" || { echo "install.sh: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
  fi
  python="$venv/bin/python"
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "install.sh: $python is older than Python 3.11" >&2; exit 1; }

say "installing pnp-service into $("$python" -c 'import sys; print(sys.prefix)')"
pip_flags=(--quiet)
# Debian marks its Python as externally managed; installing into it was asked for explicitly
# (the Python that runs clixon_server.py), so say so to pip.
if "$python" -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))' 2>/dev/null \
   && [ "$python" != "$venv/bin/python" ]; then
  pip_flags+=(--break-system-packages)
fi
if [ "$dev" = 1 ]; then
  "$python" -m pip install "${pip_flags[@]}" -e "$here[test]"
  if ! command -v yanglint >/dev/null 2>&1; then
    apt_install libyang2-tools || echo "install.sh: yanglint not found (apt-get install libyang2-tools); its checks will be skipped" >&2
  fi
else
  "$python" -m pip install "${pip_flags[@]}" "$here"
fi

if [ "$controller" = 1 ]; then
  "$python" -c 'import clixon' 2>/dev/null \
    || echo "install.sh: warning: clixon-pyapi is not importable by $python; install it there (pip install <clixon-pyapi source dir>)" >&2
  # What the controller's config says (a missing file: the defaults).
  setting() {
    [ -r "$controller_config" ] || return 0
    "$python" - "$controller_config" "$1" <<'PY'
import sys
import xml.etree.ElementTree as ET
for element in ET.parse(sys.argv[1]).getroot().iter():
    if element.tag.rsplit("}", 1)[-1] == sys.argv[2] and (element.text or "").strip():
        print(element.text.strip())
        break
PY
  }
  [ -r "$controller_config" ] || echo "install.sh: warning: $controller_config not found: the controller's default folders are assumed (--controller-config FILE)" >&2
  yang_dir=${yang_dir:-$(setting CLICON_YANG_MAIN_DIR)}
  yang_dir=${yang_dir:-/usr/local/share/controller/main}
  modules_dir=${modules_dir:-$(setting CONTROLLER_PYAPI_MODULE_PATH)}
  modules_dir=${modules_dir:-/usr/local/share/controller/modules}
  socket=$(setting CLICON_SOCK)
  socket=${socket:-/usr/local/var/run/controller/controller.sock}
  if [ -z "$controller_key" ]; then
    identity=$(setting CONTROLLER_SSH_IDENTITYFILE)
    for candidate in ${identity:+"$identity.pub"} /root/.ssh/id_ed25519.pub /root/.ssh/id_ecdsa.pub /root/.ssh/id_rsa.pub; do
      if [ -r "$candidate" ]; then controller_key=$candidate; break; fi
    done
  fi
  say "installing YANG into $yang_dir"
  install -d "$yang_dir"
  rm -f "$yang_dir"/pnp-service@*.yang  # one revision only: the controller loads every file there
  install -m 0644 "$here"/yang/pnp-service@*.yang "$yang_dir/"
  key_file="$config_dir/controller_ssh_key.pub"
  if [ -n "$controller_key" ]; then
    say "installing the controller's SSH public key ($controller_key) as $key_file, for templates"
    install -d -m 0755 "$config_dir"
    install -m 0644 "$controller_key" "$key_file"
  else
    echo "install.sh: no SSH public key of the controller found (CONTROLLER_SSH_IDENTITYFILE, root's ~/.ssh): templates that use controller_ssh_key fail until you give --controller-ssh-key FILE" >&2
  fi
  say "creating the template folder $template_dir (config template-file names are read from it)"
  install -d -m 0755 "$template_dir"
  clispec_dir=${clispec_dir:-$(setting CLICON_CLISPEC_DIR)}
  clispec_dir=${clispec_dir:-/usr/local/lib/controller/clispec}
  say "installing the CLI commands (show pnp, pnp reset, pnp claim, pnp clear) into $clispec_dir"
  install -d "$clispec_dir"
  install -m 0644 "$here"/clispec/pnp.cli "$clispec_dir/pnp.cli"
  say "installing the service module into $modules_dir"
  install -d "$modules_dir"
  module="$modules_dir/pnp_service_module.py"
  {
    cat "$here/pnp_service/clixon_module/pnp_service_module.py"
    printf '\n# Written by install.sh --controller: where this installation keeps templates and the controller'"'"'s key.\n'
    printf 'from pnp_service.service_module import configure  # noqa: E402\n\n'
    printf 'configure(template_dirs=[%s], controller_key=%s)\n' \
      "$("$python" -c 'import sys; print(repr(sys.argv[1]))' "$template_dir")" \
      "$("$python" -c 'import sys; print(repr(sys.argv[1]))' "$key_file")"
  } > "$module.tmp"
  chmod 0644 "$module.tmp" && mv "$module.tmp" "$module"
  cat <<TXT
==> done. Now restart the controller so it loads the YANG, and the service server so it loads the module:
      clixon_backend -f $controller_config -z
      clixon_backend -f $controller_config -s running
      clixon_cli -f $controller_config -1 connection open
      clixon_cli -f $controller_config -1 processes services restart
    (or your service manager's restart). Template files go in $template_dir (readable by user clicon).
    Serve the devices from the controller:
      $(dirname "$python")/pnp-service serve --clixon-socket $socket
    A new clixon_cli session has the PnP commands: show pnp, pnp reset SERIAL, pnp claim SERIAL ..., pnp clear unclaimed
TXT
else
  if [ ! -e "$datastore" ]; then
    "$(dirname "$python")/pnp-service" init "$datastore" >/dev/null
    say "created $datastore (mode 0600: it holds credentials) with two example devices"
  fi
  say "done. Serve it:  $(dirname "$python")/pnp-service serve --datastore $datastore --host 127.0.0.1 --port 8080"
fi
