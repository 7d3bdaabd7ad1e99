# The five ECS services. The flow image (code/orchestration/Dockerfile) carries
# churnops, Prefect, MLflow and Evidently, so it also runs the MLflow server,
# the Prefect server and the Evidently UI: one set of pinned versions.

locals {
  services = {
    mlflow = {
      image  = local.images.orchestration
      port   = local.listeners.mlflow.port
      cpu    = try(local.sizes.mlflow.cpu, 512)
      memory = try(local.sizes.mlflow.memory, 1024)
      command = [
        "mlflow", "server",
        "--host", "0.0.0.0",
        "--port", tostring(local.listeners.mlflow.port),
        "--serve-artifacts",
        "--artifacts-destination", "s3://${module.s3.bucket_name}/mlflow-artifacts",
      ]
      environment = {
        # Ingress is limited by the load balancer's security group.
        MLFLOW_SERVER_ALLOWED_HOSTS = "*"
        PGSSLMODE                   = "require"
        # No job runner: seven huey worker processes ChurnOps never gives work.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION = "false"
      }
      # Read by `mlflow server` from its environment, never on the command line.
      secrets = { MLFLOW_BACKEND_STORE_URI = local.db_url_secrets["mlflow"] }
      init = {
        command     = local.db_init_command
        environment = { DB_INIT_DATABASES = "mlflow", PGSSLMODE = "require" }
        secrets     = { DATABASE_URL = local.db_url_secrets["metrics"] }
      }
    }

    "prefect-server" = {
      image   = local.images.orchestration
      port    = local.listeners["prefect-server"].port
      cpu     = try(local.sizes["prefect-server"].cpu, 1024)
      memory  = try(local.sizes["prefect-server"].memory, 2048)
      command = ["prefect", "server", "start", "--host", "0.0.0.0", "--port", tostring(local.listeners["prefect-server"].port)]
      environment = {
        PREFECT_UI_API_URL = local.prefect_api_url_public
        PREFECT_HOME       = "/tmp/prefect"
        # asyncpg honours PGSSLMODE: encrypted, as rds.force_ssl requires.
        PGSSLMODE = "require"
      }
      secrets = { PREFECT_SERVER_DATABASE_CONNECTION_URL = local.db_url_secrets["prefect"] }
      init = {
        command     = local.db_init_command
        environment = { DB_INIT_DATABASES = "prefect", PGSSLMODE = "require" }
        secrets     = { DATABASE_URL = local.db_url_secrets["metrics"] }
      }
    }

    worker = {
      image         = local.images.orchestration
      cpu           = try(local.sizes.worker.cpu, 1024)
      memory        = try(local.sizes.worker.memory, 4096)
      desired_count = var.worker_desired_count
      # A process worker: flow runs execute inside this task, with its role.
      command = ["prefect", "worker", "start", "--pool", var.prefect_work_pool, "--type", "process"]
      environment = {
        DROP_STORAGE        = "s3"
        PREFECT_API_URL     = local.prefect_api_url_internal
        MLFLOW_TRACKING_URI = local.internal_urls.mlflow
        EVIDENTLY_UI_URL    = local.internal_urls.evidently
        ALERTS_TOPIC_ARN    = module.sns.topic_arn
        AWS_DEFAULT_REGION  = local.region
        PGSSLMODE           = "require"
        PREFECT_HOME        = "/tmp/prefect"
      }
      secrets = { DATABASE_URL = local.db_url_secrets["metrics"] }
    }

    evidently = {
      image   = local.images.orchestration
      port    = local.listeners.evidently.port
      cpu     = try(local.sizes.evidently.cpu, 512)
      memory  = try(local.sizes.evidently.memory, 1024)
      command = ["evidently", "ui", "--host", "0.0.0.0", "--port", tostring(local.listeners.evidently.port), "--workspace", "/tmp/evidently-workspace"]
    }

    grafana = {
      image  = local.images.grafana
      port   = local.listeners.grafana.port
      cpu    = try(local.sizes.grafana.cpu, 256)
      memory = try(local.sizes.grafana.memory, 512)
      environment = {
        METRICS_DB_HOST    = "${module.rds.address}:${module.rds.port}"
        METRICS_DB_NAME    = "metrics"
        METRICS_DB_USER    = module.rds.readonly_username
        GF_SERVER_ROOT_URL = local.public_urls.grafana
      }
      secrets = {
        METRICS_DB_PASSWORD        = "${module.rds.readonly_secret_arn}:password::"
        GF_SECURITY_ADMIN_PASSWORD = "${aws_secretsmanager_secret.grafana_admin.arn}:password::"
      }
      # The read-only role is created by the same init step, from the flow image.
      init = {
        command = local.db_init_command
        environment = {
          DB_INIT_DATABASES = ""
          READONLY_USER     = module.rds.readonly_username
          READONLY_DATABASE = "metrics"
          PGSSLMODE         = "require"
        }
        secrets = {
          DATABASE_URL      = local.db_url_secrets["metrics"]
          READONLY_PASSWORD = "${module.rds.readonly_secret_arn}:password::"
        }
      }
    }
  }
}

# ------------------------------------------------------------------ grafana admin
data "aws_secretsmanager_random_password" "grafana_admin" {
  password_length     = 24
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "grafana_admin" {
  # checkov:skip=CKV2_AWS_57:Grafana's admin password is read at start; rotation would need a Lambda that also calls Grafana's API.
  name                    = "${local.name}/grafana/admin"
  description             = "Grafana admin user"
  kms_key_id              = aws_kms_key.platform.arn
  recovery_window_in_days = var.secret_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "grafana_admin" {
  secret_id = aws_secretsmanager_secret.grafana_admin.id
  secret_string = jsonencode({
    username = "admin"
    password = data.aws_secretsmanager_random_password.grafana_admin.random_password
  })

  lifecycle {
    ignore_changes = [secret_string]
  }
}

# ------------------------------------------------------------------ task roles
data "aws_iam_policy_document" "worker_task" {
  statement {
    sid       = "ListDataPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [module.s3.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["data/*"]
    }
  }

  statement {
    sid       = "ReadWriteDataPrefixes"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${module.s3.bucket_arn}/data/*"]
  }

  statement {
    sid       = "PublishAlerts"
    actions   = ["sns:Publish"]
    resources = [module.sns.topic_arn]
  }

  statement {
    sid       = "UsePlatformKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.platform.arn]
  }
}

data "aws_iam_policy_document" "mlflow_task" {
  statement {
    sid       = "ListArtifacts"
    actions   = ["s3:ListBucket"]
    resources = [module.s3.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["mlflow-artifacts/*"]
    }
  }

  statement {
    sid       = "ReadWriteArtifacts"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${module.s3.bucket_arn}/mlflow-artifacts/*"]
  }

  statement {
    sid       = "UsePlatformKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.platform.arn]
  }
}
