data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  name       = "${var.project}-${var.environment}"
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name

  bucket_name     = coalesce(var.bucket_name, "${local.name}-drop-${local.account_id}")
  task_subnet_ids = length(var.private_subnet_ids) > 0 ? var.private_subnet_ids : var.public_subnet_ids
  # The deployment the Lambda starts: the one the runners register, a name fixed in code
  # (churnops.pipeline.PIPELINE_DEPLOYMENT; tests/terraform/test_workflows.py checks both).
  pipeline_deployment = "churn_prediction_pipeline/churnops"
  public_tasks        = length(var.private_subnet_ids) == 0

  # The UIs: the port inside the task (also the local end of `make tunnel`) and,
  # on the load balancer's one HTTPS listener, the host https://<host>.<ui_domain>.
  listeners = {
    mlflow           = { host = "mlflow", port = 5000, health_path = "/health" }
    "prefect-server" = { host = "prefect", port = 4200, health_path = "/api/health" }
    evidently        = { host = "evidently", port = 8000, health_path = "/" }
    grafana          = { host = "grafana", port = 3000, health_path = "/api/health" }
  }

  # Service to service traffic stays in the VPC (Cloud Map names, see module ecs).
  internal_urls = { for k, l in local.listeners : k => "http://${k}.${local.name}.internal:${l.port}" }
  # Users: through the load balancer after sign-in when it forwards (certificate and
  # ui_domain set), else through `make tunnel SERVICE=<ui>` on this machine.
  tunnel_urls = { for k, l in local.listeners : k => "http://localhost:${l.port}" }
  public_urls = merge(local.tunnel_urls, module.alb.urls)

  prefect_api_url_internal = "${local.internal_urls["prefect-server"]}/api"
  # The CLI's way in: the load balancer signs in browsers only.
  prefect_api_url_tunnel = "${local.tunnel_urls["prefect-server"]}/api"

  images = {
    orchestration = "${module.ecr.repository_urls["orchestration"]}:${var.image_tag}"
    lambda        = "${module.ecr.repository_urls["s3-to-prefect-lambda"]}:${var.image_tag}"
    grafana       = "${module.ecr.repository_urls["grafana"]}:${var.image_tag}"
  }

  sizes = var.service_sizes

  # Every container of every task and the Lambda: the off switches of the libraries'
  # usage data, churnops.settings.NO_USAGE_TELEMETRY (tests/terraform/test_apply_moto.py
  # checks that each carries that map).
  no_usage_telemetry = {
    DO_NOT_TRACK                     = "true"
    MLFLOW_DISABLE_TELEMETRY         = "true"
    PREFECT_SERVER_ANALYTICS_ENABLED = "false"
  }
}

# ------------------------------------------------------------------ encryption
data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_109:A key policy's resource is always the key itself ("*").
  # checkov:skip=CKV_AWS_111:A key policy's resource is always the key itself ("*").
  # checkov:skip=CKV_AWS_356:A key policy's resource is always the key itself ("*").
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsOfThisAccount"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${local.region}:${local.account_id}:log-group:*"]
    }
  }

  # CloudWatch alarms and EventBridge rules (alarms.tf, the trigger's alarms) publish to
  # the alerts topic, which this key encrypts: this account's only.
  statement {
    sid       = "AlarmsAndEventsToEncryptedTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com", "events.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }

  # The audit trail (audit.tf) encrypts its log files with this key.
  statement {
    sid       = "CloudTrailEncryptsItsFiles"
    actions   = ["kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["cloudtrail.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceArn"
      values   = [local.trail_arn]
    }
  }
}

resource "aws_kms_key" "platform" {
  description             = "${local.name}: bucket, topic, secrets, logs, images, database"
  enable_key_rotation     = true
  deletion_window_in_days = 7
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "platform" {
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.platform.key_id
}

# ------------------------------------------------------------------ network
locals {
  # A security group per service (written out, not from local.services: the groups must
  # not depend on the task definitions): its port, and whom it calls on theirs.
  security_groups = merge(
    { for k, l in local.listeners : k => { port = l.port, calls = [] } },
    {
      worker    = { port = null, calls = ["prefect-server", "mlflow", "evidently"] }
      "db-init" = { port = null, calls = [] }
    },
  )
  # What logs in to Postgres (Evidently does not): four services and the bootstrap.
  database_clients = ["mlflow", "prefect-server", "worker", "grafana", "db-init"]
}

resource "aws_vpc_security_group_egress_rule" "database" {
  for_each = toset(local.database_clients)

  security_group_id            = module.ecs.security_group_ids[each.key]
  description                  = "${each.key} to Postgres"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = module.rds.security_group_id
}

# S3 without the NAT (free, and no NAT data charge): the drop bucket, MLflow's
# artifacts and ECR's image layers, on the tasks' route tables.
resource "aws_vpc_endpoint" "s3" {
  count = length(var.s3_endpoint_route_table_ids) > 0 ? 1 : 0

  vpc_id            = var.vpc_id
  service_name      = "com.amazonaws.${local.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = var.s3_endpoint_route_table_ids
}

# ------------------------------------------------------------------ tunnel operators
# What `make tunnel` needs and nothing more: a port forward (AWS-StartPortForwardingSession)
# into a task of this cluster. No ecs:ExecuteCommand, so no shell in a container.
data "aws_iam_policy_document" "tunnel_operator" {
  statement {
    sid       = "FindTasks"
    actions   = ["ecs:ListTasks", "ecs:DescribeTasks"]
    resources = ["*"]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [module.ecs.cluster_arn]
    }
  }

  statement {
    sid     = "PortForwardIntoTasks"
    actions = ["ssm:StartSession"]
    resources = [
      "arn:${data.aws_partition.current.partition}:ecs:${local.region}:${local.account_id}:task/${local.name}/*",
      "arn:${data.aws_partition.current.partition}:ssm:${local.region}::document/AWS-StartPortForwardingSession",
    ]

    condition {
      test     = "BoolIfExists"
      variable = "ssm:SessionDocumentAccessCheck"
      values   = ["true"]
    }
  }

  statement {
    sid       = "EndOwnSessions"
    actions   = ["ssm:TerminateSession", "ssm:ResumeSession"]
    resources = ["arn:${data.aws_partition.current.partition}:ssm:*:*:session/$${aws:userid}-*"]
  }
}

resource "aws_iam_policy" "tunnel_operator" {
  count = var.tunnel_enabled ? 1 : 0

  name        = "${local.name}-tunnel-operator"
  description = "make tunnel: SSM port forwarding into the ${local.name} tasks only (no exec shell)"
  policy      = data.aws_iam_policy_document.tunnel_operator.json
}

# ------------------------------------------------------------------ modules
module "ecr" {
  source = "./modules/ecr"

  name_prefix  = local.name
  repositories = ["orchestration", "s3-to-prefect-lambda", "grafana"]
  kms_key_arn  = aws_kms_key.platform.arn
}

module "sns" {
  source = "./modules/sns"

  topic_name  = "${local.name}-alerts"
  email       = var.alert_email
  kms_key_arn = aws_kms_key.platform.arn
}

module "s3" {
  source = "./modules/s3"

  bucket_name              = local.bucket_name
  force_destroy            = var.bucket_force_destroy
  kms_key_arn              = aws_kms_key.platform.arn
  processed_retention_days = var.processed_retention_days
  deny_insecure_transport  = var.s3_deny_insecure_transport
  lambda_enabled           = var.lambda_enabled
  lambda_function_arn      = module.lambda.function_arn
}

module "lambda" {
  source = "./modules/s3-to-prefect-lambda"

  function_name             = "${local.name}-s3-to-prefect"
  image_uri                 = local.images.lambda
  prefect_api_url           = coalesce(var.prefect_api_url_for_lambda, local.prefect_api_url_internal)
  prefect_auth_secret_arn   = aws_secretsmanager_secret.credentials["prefect"].arn
  prefect_security_group_id = module.ecs.security_group_ids["prefect-server"]
  # Every task reads its secrets through the endpoint too once it exists (private DNS).
  endpoint_client_security_group_ids = values(module.ecs.security_group_ids)
  prefect_port                       = local.listeners["prefect-server"].port
  vpc_id                             = var.vpc_id
  subnet_ids                         = local.task_subnet_ids
  region                             = local.region
  # Public subnets give the function no public IP: it needs the endpoint there.
  secretsmanager_endpoint = var.secretsmanager_vpc_endpoint || local.public_tasks
  alarm_topic_arn         = module.sns.topic_arn
  prefect_deployment      = local.pipeline_deployment
  bucket_arn              = module.s3.bucket_arn
  bucket_account_id       = local.account_id
  reserved_concurrency    = var.lambda_reserved_concurrency
  log_retention_days      = var.log_retention_days
  kms_key_arn             = aws_kms_key.platform.arn
  extra_environment       = local.no_usage_telemetry
}

module "alb" {
  source = "./modules/alb"

  name                = local.name
  vpc_id              = var.vpc_id
  subnet_ids          = var.public_subnet_ids
  internal            = var.internal_load_balancer
  allowed_cidr_blocks = var.allowed_cidr_blocks
  certificate_arn     = var.certificate_arn
  allow_insecure_http = var.allow_insecure_http
  domain              = var.ui_domain
  authentication      = var.ui_authentication
  cognito_users       = var.ui_users
  oidc                = var.ui_oidc
  oidc_client_secret  = var.ui_oidc_client_secret
  uis                 = local.listeners
  access_logs_bucket  = module.audit_bucket.bucket_with_policy
}

module "rds" {
  source = "./modules/rds-postgres"

  name                        = local.name
  vpc_id                      = var.vpc_id
  subnet_ids                  = local.task_subnet_ids
  allowed_security_group_ids  = [for k in local.database_clients : module.ecs.security_group_ids[k]]
  kms_key_arn                 = aws_kms_key.platform.arn
  engine_version              = var.db_engine_version
  instance_class              = var.db_instance_class
  allocated_storage           = var.db_allocated_storage
  multi_az                    = var.db_multi_az
  deletion_protection         = var.db_deletion_protection
  skip_final_snapshot         = var.db_skip_final_snapshot
  backup_retention_days       = var.db_backup_retention_days
  secret_recovery_window_days = var.secret_recovery_window_days
  roles                       = local.db_roles
  credentials_version         = var.db_credentials_version
}

module "ecs" {
  source = "./modules/ecs"

  name                  = local.name
  vpc_id                = var.vpc_id
  subnet_ids            = local.task_subnet_ids
  assign_public_ip      = local.public_tasks
  alb_security_group_id = module.alb.security_group_id
  target_group_arns     = module.alb.target_group_arns
  load_balancer_ports   = { for k, l in local.listeners : k => l.port }
  security_groups       = local.security_groups
  extra_ingress = {
    "Prefect API from the S3-to-Prefect Lambda" = {
      service           = "prefect-server"
      security_group_id = module.lambda.security_group_id
    }
  }
  ecr_repository_arns = values(module.ecr.repository_arns)
  kms_key_arn         = aws_kms_key.platform.arn
  log_retention_days  = var.log_retention_days
  environment         = local.no_usage_telemetry
  container_insights  = var.container_insights
  # ECS Exec on the UIs' tasks: `make tunnel SERVICE=<ui>` forwards a local port into one.
  services = { for k, s in local.services : k => merge(s, { enable_execute_command = var.tunnel_enabled && contains(keys(local.listeners), k) }) }
  task_policies = {
    mlflow = data.aws_iam_policy_document.mlflow_task.json
    worker = data.aws_iam_policy_document.worker_task.json
  }
}

# The load balancer's and the Lambda's rules joined the services' calls (modules/ecs):
# the same rules, new addresses.
moved {
  from = module.ecs.aws_vpc_security_group_ingress_rule.extra["Prefect API from the S3-to-Prefect Lambda"]
  to   = module.ecs.aws_vpc_security_group_ingress_rule.calls["Prefect API from the S3-to-Prefect Lambda"]
}

moved {
  from = module.ecs.aws_vpc_security_group_ingress_rule.load_balancer["mlflow"]
  to   = module.ecs.aws_vpc_security_group_ingress_rule.calls["mlflow"]
}

moved {
  from = module.ecs.aws_vpc_security_group_egress_rule.load_balancer["mlflow"]
  to   = module.ecs.aws_vpc_security_group_egress_rule.calls["mlflow"]
}

moved {
  from = module.ecs.aws_vpc_security_group_ingress_rule.load_balancer["prefect-server"]
  to   = module.ecs.aws_vpc_security_group_ingress_rule.calls["prefect-server"]
}

moved {
  from = module.ecs.aws_vpc_security_group_egress_rule.load_balancer["prefect-server"]
  to   = module.ecs.aws_vpc_security_group_egress_rule.calls["prefect-server"]
}

moved {
  from = module.ecs.aws_vpc_security_group_ingress_rule.load_balancer["evidently"]
  to   = module.ecs.aws_vpc_security_group_ingress_rule.calls["evidently"]
}

moved {
  from = module.ecs.aws_vpc_security_group_egress_rule.load_balancer["evidently"]
  to   = module.ecs.aws_vpc_security_group_egress_rule.calls["evidently"]
}

moved {
  from = module.ecs.aws_vpc_security_group_ingress_rule.load_balancer["grafana"]
  to   = module.ecs.aws_vpc_security_group_ingress_rule.calls["grafana"]
}

moved {
  from = module.ecs.aws_vpc_security_group_egress_rule.load_balancer["grafana"]
  to   = module.ecs.aws_vpc_security_group_egress_rule.calls["grafana"]
}
