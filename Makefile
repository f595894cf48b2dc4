# The two commands a newcomer needs: `make run` (the proxy in local mode, no account) and `make test`.
# Both first install the Debian packages they need when run as root, or print the command otherwise.

DEBIAN_PACKAGES := libssl-dev pkg-config curl openssl python3
# The transparent-mode tests build network namespaces with iptables and iproute2 (they run only as root);
# the report test renders the HTML report in headless chromium; the slow-client test runs slowhttptest; the
# HTTP/2 inspection tests run nghttp (nghttp2-client) through a socat CONNECT shim, and Python's h2 library
# (python3-h2 for Debian's python3; pip installs it when the python3 on PATH is another one); a Node.js client
# checks the minted leaves with Node's own TLS stack.
TEST_PACKAGES := iptables iproute2 chromium slowhttptest nghttp2-client socat python3-h2 nodejs
PORT ?= 8080
# The admin listener (/metrics, /healthz, /readyz) is on 127.0.0.1:9090 unless ADMIN_LISTEN (or
# KAIZEN_ADMIN_LISTEN) says otherwise; a local Prometheus often holds 9090.
ADMIN_LISTEN ?=
# More options for `make run`, as `kaizen-egress run --help` lists them: make run ARGS="--allow-private 127.0.0.1"
ARGS ?=

.PHONY: run test build release deps python-deps

deps:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES) $(EXTRA_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
		else \
			echo "Missing Debian packages:$$missing"; \
			echo "Install them with: sudo apt-get install -y$$missing"; \
			exit 1; \
		fi; \
	fi

run: deps
	@swift run kaizen-egress --local --port $(PORT) $(if $(ADMIN_LISTEN),--admin-listen $(ADMIN_LISTEN)) $(ARGS)

test: EXTRA_PACKAGES = $(if $(filter 0,$(shell id -u)),$(TEST_PACKAGES))
# Python's h2 for the HTTP/2 tests, when the python3 on PATH lacks it (not Debian's, or not installed as root).
python-deps:
	@python3 -c 'import h2' 2>/dev/null || python3 -m pip install --quiet h2 || python3 -m pip install --quiet --user --break-system-packages h2

test: deps python-deps
	swift test
	scripts/smoke-release.sh
	scripts/fuzz.sh 60

build: deps
	swift build

release: deps
	scripts/build-release.sh
