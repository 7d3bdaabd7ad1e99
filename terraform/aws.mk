# AWS deployment targets, included by the top-level Makefile (`include terraform/aws.mk`).
# Run from the repository root. Real account: put terraform/vars/$(TF_ENV).tfvars and
# terraform/vars/$(TF_ENV).backend.tfvars in place (copy the *.template files), have AWS
# credentials in the environment (profile, SSO, ...) and Docker for the images.
#
#   make plan | apply | destroy          TF_ENV=stg (default), IMAGE_TAG=<git sha>
#   make plan PLAN=f; make apply-plan PLAN=f   save a plan, review it, apply exactly it
#                                        (what .github/workflows/deploy.yml does)
#   make disable-lambda | enable-lambda  stop / resume triggering on data/input/ and data/labels/
#   make tunnel SERVICE=mlflow           a UI on http://localhost:<port> through SSM (ECS Exec)
#   make apply-local | destroy-local     the whole module against moto on loopback
#   make tf-check                        fmt, validate, checkov
#   make hadolint                        lint the Dockerfiles

TF_ENV ?= stg
TF_DIR := terraform
TF := terraform -chdir=$(TF_DIR)
TF_VARS_FILE ?= $(TF_DIR)/vars/$(TF_ENV).tfvars
TF_BACKEND_CONFIG ?= $(TF_DIR)/vars/$(TF_ENV).backend.tfvars
# Extra flags of `terraform plan` (the pull-request plan: -lock=false, it only reads).
TF_PLAN_FLAGS ?=
# Written by disable-lambda / enable-lambda so that later applies keep the switch.
TF_LAMBDA_SWITCH := $(TF_DIR)/vars/$(TF_ENV).lambda.tfvars
TF_OUTPUTS := .churnops/terraform-$(TF_ENV)-outputs.json
TF_LOCAL_WORKDIR ?= .churnops/terraform-local
IMAGE_TAG ?= $(shell git rev-parse --short=12 HEAD)
# The tag in the state, for targeted applies that must not roll the images.
TF_DEPLOYED_TAG = $(shell $(TF) output -raw image_tag 2>/dev/null)
TF_PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,PIPENV_VENV_IN_PROJECT=1 pipenv run python)
TF_VENV_BIN := $(if $(wildcard .venv/bin),.venv/bin/,)
TF_PREREQ := $(if $(VENV_STAMP),install,)
TF_VAR_ARGS = -var-file=$(abspath $(TF_VARS_FILE)) \
	$(if $(wildcard $(TF_LAMBDA_SWITCH)),-var-file=$(abspath $(TF_LAMBDA_SWITCH)),)
# What a target needs, checked before it changes anything (one line naming what is missing).
TF_PREFLIGHT = $(TF_PY) $(TF_DIR)/scripts/preflight.py --tfvars $(TF_VARS_FILE) \
	--backend $(TF_BACKEND_CONFIG) --outputs $(TF_OUTPUTS)
DOCKERFILES := $(wildcard code/orchestration/Dockerfile code/s3_to_prefect_lambda/Dockerfile code/grafana/Dockerfile)

.PHONY: tf-init plan apply apply-plan post-apply destroy push-images disable-lambda enable-lambda \
	apply-local destroy-local tf-check hadolint

# TF_NEEDS: what a target checks besides (set per target; make gives it to tf-init too),
# so that it is named before terraform init.
tf-init: $(TF_PREREQ)
	@$(TF_PREFLIGHT) vars credentials $(TF_NEEDS) --plan "$(PLAN)"
	$(TF) init -input=false -reconfigure -backend-config=$(abspath $(TF_BACKEND_CONFIG))

plan: tf-init ## Show what `make apply` would change in AWS (TF_ENV=stg); PLAN=file saves it for apply-plan
	$(TF) plan -input=false $(TF_PLAN_FLAGS) $(TF_VAR_ARGS) -var=image_tag=$(IMAGE_TAG) $(if $(PLAN),-out=$(abspath $(PLAN)))

# The repositories first (the images need them), then the images, then the plan of
# everything, applied once you have read it and answered yes.
apply: TF_NEEDS = $(if $(filter 1,$(SKIP_IMAGES)),,docker aws-cli)
apply: tf-init $(TF_PREREQ) ## Provision the platform in AWS: push the images, apply the plan you confirm, post-apply
	$(TF) apply -input=false -auto-approve $(TF_VAR_ARGS) -var=image_tag=$(IMAGE_TAG) -target=module.ecr
	@if [ "$(SKIP_IMAGES)" = "1" ]; then echo "SKIP_IMAGES=1: images $(IMAGE_TAG) must already be in ECR"; \
		else $(MAKE) --no-print-directory push-images IMAGE_TAG=$(IMAGE_TAG); fi
	$(TF) apply $(TF_VAR_ARGS) -var=image_tag=$(IMAGE_TAG)
	@$(MAKE) --no-print-directory post-apply

apply-plan: TF_NEEDS = plan
apply-plan: tf-init $(TF_PREREQ) ## Apply exactly a saved plan (PLAN=file of `make plan PLAN=file`), then post-apply
	$(TF) apply -input=false $(abspath $(PLAN))
	@$(MAKE) --no-print-directory post-apply

post-apply: $(TF_PREREQ) ## After an apply: print the URLs, bootstrap the database, wait for the services, register the Prefect deployments
	@$(TF_PREFLIGHT) credentials outputs
	$(TF_PY) $(TF_DIR)/scripts/post_apply.py urls $(TF_OUTPUTS)
	$(TF_PY) $(TF_DIR)/scripts/post_apply.py database $(TF_OUTPUTS)
	$(TF_PY) $(TF_DIR)/scripts/post_apply.py wait $(TF_OUTPUTS)
	$(TF_PY) $(TF_DIR)/scripts/post_apply.py deployments $(TF_OUTPUTS)

push-images: $(TF_PREREQ) ## Build the three images, then push them to ECR with IMAGE_TAG (needs Docker); a critical scan finding stops here
	@$(TF_PREFLIGHT) credentials docker aws-cli outputs
	$(TF_PY) -m terraform.scripts.push_images $(TF_OUTPUTS) $(IMAGE_TAG)
	$(TF_PY) -m terraform.scripts.image_scan $(TF_OUTPUTS) $(IMAGE_TAG)

destroy: tf-init ## Remove the platform from AWS (set db_deletion_protection = false first)
	$(TF) destroy -input=false -auto-approve $(TF_VAR_ARGS) -var=image_tag=$(or $(TF_DEPLOYED_TAG),$(IMAGE_TAG))

disable-lambda: tf-init ## Stop triggering the Lambda on new files in data/input/ and data/labels/
	@$(TF_PREFLIGHT) outputs
	echo 'lambda_enabled = false' > $(TF_LAMBDA_SWITCH)
	$(TF) apply -input=false -auto-approve $(TF_VAR_ARGS) -var=image_tag=$(TF_DEPLOYED_TAG) \
		-target=module.s3.aws_s3_bucket_notification.drop

enable-lambda: tf-init ## Trigger the Lambda again on new files in data/input/ and data/labels/
	@$(TF_PREFLIGHT) outputs
	echo 'lambda_enabled = true' > $(TF_LAMBDA_SWITCH)
	$(TF) apply -input=false -auto-approve $(TF_VAR_ARGS) -var=image_tag=$(TF_DEPLOYED_TAG) \
		-target=module.s3.aws_s3_bucket_notification.drop

.PHONY: tunnel
tunnel: TF_NEEDS = aws-cli session-manager-plugin
tunnel: tf-init $(TF_PREREQ) ## A UI on localhost through SSM, SERVICE=mlflow|prefect-server|evidently|grafana (AWS CLI + Session Manager plugin)
	@test -n "$(SERVICE)" || { echo "usage: make tunnel SERVICE=mlflow|prefect-server|evidently|grafana"; exit 1; }
	@$(TF_PREFLIGHT) outputs
	$(TF_PY) -m terraform.scripts.tunnel $(TF_OUTPUTS) $(SERVICE)

apply-local: $(TF_PREREQ) ## Apply the whole module against moto on loopback (no AWS account)
	$(TF_PY) $(TF_DIR)/scripts/tf_local.py up --workdir $(TF_LOCAL_WORKDIR)

destroy-local: $(TF_PREREQ) ## Destroy what apply-local created and stop its moto server
	$(TF_PY) $(TF_DIR)/scripts/tf_local.py down --workdir $(TF_LOCAL_WORKDIR)

tf-check: $(TF_PREREQ) ## terraform fmt and validate, checkov over terraform/
	terraform fmt -check -recursive $(TF_DIR)
	@rm -rf .churnops/terraform-validate && mkdir -p .churnops/terraform-validate
	$(TF_PY) -c "import shutil,sys; sys.path.insert(0,'$(TF_DIR)/scripts'); import tf_local; \
		shutil.copytree('$(TF_DIR)', '.churnops/terraform-validate/m', ignore=tf_local.COPY_IGNORE); \
		tf_local.write_cli_config(tf_local.Path('.churnops/terraform-validate/cli.rc'))"
	TF_CLI_CONFIG_FILE=$(abspath .churnops/terraform-validate/cli.rc) \
		terraform -chdir=.churnops/terraform-validate/m init -backend=false -input=false -no-color > /dev/null
	TF_CLI_CONFIG_FILE=$(abspath .churnops/terraform-validate/cli.rc) \
		terraform -chdir=.churnops/terraform-validate/m validate
	$(TF_VENV_BIN)checkov -d $(TF_DIR) --framework terraform --quiet --compact --skip-download

hadolint: $(TF_PREREQ) ## Lint the Dockerfiles with hadolint
	$(TF_VENV_BIN)hadolint $(DOCKERFILES)
