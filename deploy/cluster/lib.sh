# shellcheck shell=bash disable=SC2034  # the settings are used by the scripts that source this file
# What every cluster script shares: the pinned versions, the ports, and `run`, which prints each command and,
# with DRY_RUN=1, only prints it. Sourced by the scripts beside it; not run on its own.

# One Kubernetes version for kubeadm, kubelet and kubectl on every node (the apt repository is per minor version).
KUBERNETES_VERSION=${KUBERNETES_VERSION:-1.34.1}
KUBERNETES_MINOR=${KUBERNETES_VERSION%.*}
KUBERNETES_PACKAGE_VERSION="${KUBERNETES_VERSION}-1.1"
# Flannel: one UDP port (VXLAN), no BGP, no policy engine; all a NodePort service on three VMs needs.
FLANNEL_VERSION=${FLANNEL_VERSION:-v0.26.1}
FLANNEL_MANIFEST="https://github.com/flannel-io/flannel/releases/download/${FLANNEL_VERSION}/kube-flannel.yml"
POD_NETWORK_CIDR=10.244.0.0/16 # Flannel's default network

# Inbound ports per role, as "protocol:port" or "protocol:first:last" (Kubernetes' "Ports and Protocols").
CONTROLLER_PORTS=(
  tcp:6443        # API server: workers, kubectl
  tcp:2379:2380   # etcd (stacked on the controller)
  tcp:10250       # kubelet API
  tcp:10257       # kube-controller-manager
  tcp:10259       # kube-scheduler
  udp:8472        # Flannel VXLAN between nodes
)
WORKER_PORTS=(
  tcp:10250       # kubelet API: logs, exec, metrics from the controller
  tcp:10256       # kube-proxy health check
  tcp:30000:32767 # NodePort services (CloudDetect: 30500)
  udp:8472        # Flannel VXLAN between nodes
)

DRY_RUN=${DRY_RUN:-0}

say() { echo "== $*"; }

# Print the command, then run it unless DRY_RUN=1.
run() {
  echo "+ $*"
  if [[ $DRY_RUN != 1 ]]; then
    "$@"
  fi
}

# Write stdin to a file (through `run`, so DRY_RUN=1 shows the content instead).
write_file() {
  local path=$1 content line
  content=$(cat)
  echo "+ write $path:"
  while IFS= read -r line; do echo "    $line"; done <<<"$content"
  if [[ $DRY_RUN != 1 ]]; then
    printf '%s\n' "$content" >"$path"
  fi
}

need_root() {
  if [[ $DRY_RUN != 1 && $EUID -ne 0 ]]; then
    echo "run as root (sudo $0), or with DRY_RUN=1 to print the plan" >&2
    exit 1
  fi
}
