#!/usr/bin/env bash
# Wall time of playbooks/verify.yml against N bootstrapped podman containers at once (forks >= N).
#
# Reuses the bootstrap scenario without molecule: the shared create.yml starts N containers
# (vtime-host1..N, over real SSH), molecule/bootstrap's prepare.yml and converge.yml (with that
# scenario's inventory variables) bootstrap, activate and verify them, then playbooks/verify.yml is
# timed on its own RUNS times cold and once warm, and the containers are removed (also on failure).
#
#   molecule/_shared/verify-fleet-timing.sh [N=6] [RUNS=3]
set -euo pipefail
N="${1:-6}"
RUNS="${2:-3}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="$REPO/.venv/bin"
SCENARIO="$REPO/molecule/bootstrap"
EPH="$(mktemp -d /tmp/nixfleet-verify-timing.XXXXXX)"
FORKS=$(( N > 10 ? N : 10 ))

export PATH="$BIN:$PATH" ANSIBLE_COLLECTIONS_PATH="$REPO/.collections" ANSIBLE_ROLES_PATH="$REPO/roles"
export ANSIBLE_HOST_KEY_CHECKING=False SOPS_DISABLE_VERSION_CHECK=1 ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
export ANSIBLE_CONFIG="$EPH/ansible.cfg" ANSIBLE_FORKS="$FORKS" ANSIBLE_RETRY_FILES_ENABLED=False

printf '[defaults]\nforks = %s\n' "$FORKS" >"$ANSIBLE_CONFIG"

# The variables molecule gives create.yml / destroy.yml.
"$BIN/python" - "$N" "$EPH" "$SCENARIO" >"$EPH/molecule-vars.json" <<'PY'
import json, sys
n, eph, scenario = int(sys.argv[1]), sys.argv[2], sys.argv[3]
print(json.dumps({
    "molecule_yml": {"scenario": {"name": "verify-timing"},
                     "platforms": [{"name": f"vtime-host{i}", "groups": ["nixos"]} for i in range(1, n + 1)]},
    "molecule_ephemeral_directory": eph,
    "molecule_instance_config": f"{eph}/instance_config.yml",
    "molecule_scenario_directory": scenario,
}))
PY

cleanup() {
  ansible-playbook -i localhost, -c local -e "ansible_python_interpreter=$BIN/python" \
    -e "@$EPH/molecule-vars.json" "$REPO/molecule/_shared/destroy.yml" >"$EPH/destroy.log" 2>&1 \
    || echo "verify-fleet-timing: destroy failed, see $EPH/destroy.log" >&2
  [ -n "${KEEP:-}" ] || rm -rf "$EPH"
}
trap cleanup EXIT

run() {  # run NAME PLAYBOOK ARGS...: quiet unless it fails
  local name="$1"; shift
  local start end
  start=$(date +%s.%N)
  if ! ansible-playbook "$@" >"$EPH/$name.log" 2>&1; then
    tail -n 60 "$EPH/$name.log" >&2
    echo "verify-fleet-timing: $name failed" >&2
    KEEP=1
    exit 1
  fi
  end=$(date +%s.%N)
  printf '%-10s %6.1f s\n' "$name" "$(echo "$end - $start" | bc)"
}

run create -i localhost, -c local -e "ansible_python_interpreter=$BIN/python" -e "@$EPH/molecule-vars.json" \
  "$REPO/molecule/_shared/create.yml"

# The inventory molecule would write: the bootstrap scenario's group_vars, every host in `nixos`.
"$BIN/python" - "$EPH" "$SCENARIO/molecule.yml" >"$EPH/inventory.yml" <<'PY'
import sys, yaml
eph, molecule_yml = sys.argv[1], sys.argv[2]
config = yaml.safe_load(open(molecule_yml))
group_vars = config["provisioner"]["inventory"]["group_vars"]
instances = yaml.safe_load(open(f"{eph}/instance_config.yml"))
ssh_args = ("-o UserKnownHostsFile=/dev/null -o ControlMaster=auto -o ControlPersist=60s -o LogLevel=ERROR "
            "-o IdentitiesOnly=yes -o StrictHostKeyChecking=no")
hosts = {i["instance"]: {"ansible_host": i["address"], "ansible_port": i["port"], "ansible_user": i["user"],
                         "ansible_private_key_file": i["identity_file"], "ansible_ssh_common_args": ssh_args}
         for i in instances}
inventory = {"all": {
    "vars": {"molecule_ephemeral_directory": eph, **group_vars.get("all", {})},
    "hosts": {"localhost": {"ansible_connection": "local",
                            "ansible_python_interpreter": "{{ ansible_playbook_python }}"}},
    "children": {"nixos": {"hosts": hosts, "vars": group_vars.get("nixos", {})}},
}}
print(yaml.safe_dump(inventory, sort_keys=False))
PY

run prepare -i "$EPH/inventory.yml" "$SCENARIO/prepare.yml"
run bootstrap -i "$EPH/inventory.yml" "$SCENARIO/converge.yml"
# Cold: a fresh ssh ControlPath directory per run, so no master connection of an earlier run is
# reused (what an operator's first run sees); warm: the masters of the run before are reused.
for i in $(seq 1 "$RUNS"); do
  ANSIBLE_SSH_CONTROL_PATH_DIR="$EPH/cp-$i" run "verify-cold#$i" -i "$EPH/inventory.yml" "$REPO/playbooks/verify.yml"
done
ANSIBLE_SSH_CONTROL_PATH_DIR="$EPH/cp-$RUNS" run "verify-warm" -i "$EPH/inventory.yml" "$REPO/playbooks/verify.yml"
grep -E '^vtime-host[0-9]+ +:' "$EPH/verify-warm.log" | sed 's/  */ /g'
echo "verify-fleet-timing: playbooks/verify.yml on $N hosts, forks $FORKS (wall times above)"
