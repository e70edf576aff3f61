# shellcheck shell=bash disable=SC2034  # the settings are used by the scripts that source this file
# What every cluster script shares: the pinned versions, the ports, and `run`, which prints each command and,
# with DRY_RUN=1, only prints it. Sourced by the scripts beside it; not run on its own.

# One Kubernetes version for kubeadm, kubelet and kubectl on every node (the apt repository is per minor version);
# move it here and nowhere else. 1.37 is the current minor (supported until 2027-10-28); 1.37.1 (2026-09-15) is its
# latest patch that could be confirmed on 2026-11-25. 1.37.2 was scheduled for 2026-10-13 but its release could
# not be confirmed: check https://kubernetes.io/releases/ and take the newest 1.37 patch.
KUBERNETES_VERSION=${KUBERNETES_VERSION:-1.37.1}
KUBERNETES_MINOR=${KUBERNETES_VERSION%.*}
KUBERNETES_PACKAGE_VERSION="${KUBERNETES_VERSION}-1.1"
# Flannel: one UDP port (VXLAN), no BGP, no policy engine; all a NodePort service on three VMs needs. v0.28.9
# (2026-08) is the newest release that could be confirmed on 2026-11-25; later ones may exist.
FLANNEL_VERSION=${FLANNEL_VERSION:-v0.28.9}
FLANNEL_MANIFEST="https://github.com/flannel-io/flannel/releases/download/${FLANNEL_VERSION}/kube-flannel.yml"
POD_NETWORK_CIDR=10.244.0.0/16 # Flannel's default network
# Docker Engine from Docker's repository: it brings containerd (package containerd.io, 2.x), which the kubelet
# uses through CRI since dockershim left Kubernetes in 1.24; Docker itself builds and exports the image.
DOCKER_REPOSITORY=https://download.docker.com/linux/ubuntu
DOCKER_PACKAGES=(docker-ce docker-ce-cli containerd.io docker-buildx-plugin)

# Inbound ports per role, as "protocol:port" or "protocol:first:last" (Kubernetes' "Ports and Protocols").
CONTROLLER_PORTS=(
  tcp:6443        # API server: workers, kubectl
  tcp:2379:2380   # etcd (stacked on the controller)
  tcp:10250       # kubelet API
  tcp:10257       # kube-controller-manager
  tcp:10259       # kube-scheduler
  udp:8472        # Flannel VXLAN between nodes
  tcp:30000:32767 # NodePort services: every node answers on them, the controller too
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
