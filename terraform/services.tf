# The five ECS services. The flow image (code/orchestration/Dockerfile) carries
# churnops, Prefect, MLflow and Evidently, so it also runs the MLflow server,
# the Prefect server and the Evidently UI: one set of pinned versions.
# Every service's container has a health check. The database bootstrap is a one-off
# task (database.tf), not part of any service: no service sees the master secret.

locals {
  # MLflow's client timeout and retries, identical on the local platform: the values of
  # MLFLOW_CLIENT_ENV in code/churnops/settings.py, written here because this module is
  # applied from a copy of terraform/ alone (test_apply_moto checks that they agree).
  mlflow_client_env = {
    MLFLOW_HTTP_REQUEST_MAX_RETRIES = "2"
    MLFLOW_HTTP_REQUEST_TIMEOUT     = "30"
  }

  # An HTTP health check in the flow image, which has Python and no curl.
  http_check_code = "import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1], timeout=4).status != 200)"
  http_check      = ["CMD", "python", "-c", local.http_check_code]
  # Written by terraform/scripts/mlflow_start.py once the worker's MLflow user exists.
  mlflow_worker_ready = "/tmp/mlflow-worker.ready"

  services = {
    "db-init" = local.db_bootstrap

    mlflow = {
      image  = local.images.orchestration
      port   = local.listeners.mlflow.port
      cpu    = try(local.sizes.mlflow.cpu, 512)
      memory = try(local.sizes.mlflow.memory, 1024)
      # Healthy once the worker's user is set up, and the server answers.
      health_check = {
        command = ["CMD-SHELL", "test -f ${local.mlflow_worker_ready} && python -c '${local.http_check_code}' http://127.0.0.1:${local.listeners.mlflow.port}${local.listeners.mlflow.health_path}"]
      }
      # The basic-auth app, its user store in /tmp: at each start MLflow creates the
      # admin from the secret, and mlflow_start.py (writing the config first) the
      # worker's own user, then execs `mlflow server` with these arguments.
      command = [
        "python", "-c", file("${path.module}/scripts/mlflow_start.py"),
        "--host", "0.0.0.0",
        "--port", tostring(local.listeners.mlflow.port),
        "--serve-artifacts",
        "--artifacts-destination", "s3://${module.s3.bucket_name}/mlflow-artifacts",
        "--app-name", "basic-auth",
      ]
      environment = {
        # The names it is reached by (Host header, against DNS rebinding): the load balancer
        # (after sign-in), the worker (Cloud Map), the tunnel. /health is exempt (target checks).
        MLFLOW_SERVER_ALLOWED_HOSTS = join(",", compact([
          "mlflow.${local.name}.internal:${local.listeners.mlflow.port}",
          var.ui_domain == null ? null : "mlflow.${var.ui_domain}",
          "localhost:*",
          "127.0.0.1:*",
        ]))
        MLFLOW_AUTH_CONFIG_PATH = "/tmp/mlflow-basic-auth.ini"
        # auth_cache_ttl_seconds: MLflow's own cache of a checked login. Without it every
        # request paid a password hash check (tens of ms of CPU by design). A cached login
        # outlives a password change for up to a minute; the logins change only at a start.
        MLFLOW_AUTH_INI            = "[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:////tmp/mlflow-basic-auth.db\nauth_cache_ttl_seconds = 60"
        MLFLOW_AUTH_ADMIN_USERNAME = local.mlflow_admin_user
        MLFLOW_WORKER_USERNAME     = local.mlflow_worker_user
        MLFLOW_WORKER_READY        = local.mlflow_worker_ready
        PGSSLMODE                  = "require"
        # No job runner: seven huey worker processes ChurnOps never gives work.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION = "false"
      }
      # Read by `mlflow server` from its environment, never on the command line.
      secrets = {
        MLFLOW_BACKEND_STORE_URI       = local.db_url_secrets["mlflow"]
        MLFLOW_AUTH_ADMIN_PASSWORD     = local.credential_refs.mlflow_password
        MLFLOW_WORKER_PASSWORD         = local.credential_refs.mlflow_worker
        MLFLOW_FLASK_SERVER_SECRET_KEY = local.credential_refs.mlflow_flask_key
      }
    }

    "prefect-server" = {
      image  = local.images.orchestration
      port   = local.listeners["prefect-server"].port
      cpu    = try(local.sizes["prefect-server"].cpu, 1024)
      memory = try(local.sizes["prefect-server"].memory, 2048)
      health_check = {
        command = concat(local.http_check, ["http://127.0.0.1:${local.listeners["prefect-server"].port}${local.listeners["prefect-server"].health_path}"])
      }
      command = ["prefect", "server", "start", "--host", "0.0.0.0", "--port", tostring(local.listeners["prefect-server"].port)]
      environment = {
        # Relative: the UI calls the API on the host it was loaded from (load balancer or tunnel).
        PREFECT_UI_API_URL = "/api"
        PREFECT_HOME       = "/tmp/prefect"
        # asyncpg honours PGSSLMODE: encrypted, as rds.force_ssl requires.
        PGSSLMODE = "require"
      }
      secrets = {
        PREFECT_SERVER_DATABASE_CONNECTION_URL = local.db_url_secrets["prefect"]
        PREFECT_SERVER_API_AUTH_STRING         = local.credential_refs.prefect_auth_string
      }
    }

    worker = {
      image         = local.images.orchestration
      cpu           = try(local.sizes.worker.cpu, 1024)
      memory        = try(local.sizes.worker.memory, 3072)
      desired_count = var.worker_min_count
      # One warm runner per task (churnops.platform.runner, as `churnops up` runs them):
      # imports and the model loaded once, one flow run at a time, so the task's memory
      # bounds one run and an OOM kill takes one run (the reconciler re-drives it).
      # scaling.tf adds tasks on Prefect's queue depth. On SIGTERM it takes no new run
      # and finishes the one in progress (stop_timeout); while a run executes, the
      # task is protected from scale-in and deployments.
      command = ["python", "-m", "churnops.platform.runner"]
      # The runner writes this file once it serves (deployments registered, model loaded).
      health_check = { command = ["CMD-SHELL", "test -f /tmp/churnops/runner.ready.0"], start_period = 300 }
      stop_timeout = 120
      # MLflow's client timeout and retries: the file the local runners read too.
      environment = merge(local.mlflow_client_env, {
        DROP_STORAGE        = "s3"
        PREFECT_API_URL     = local.prefect_api_url_internal
        MLFLOW_TRACKING_URI = local.internal_urls.mlflow
        EVIDENTLY_UI_URL    = local.internal_urls.evidently
        ALERTS_TOPIC_ARN    = module.sns.topic_arn
        AWS_DEFAULT_REGION  = local.region
        PGSSLMODE           = "require"
        PREFECT_HOME        = "/tmp/prefect"
        # The runner's bucket and home, and the metrics the alarms (alarms.tf) and the
        # autoscaling (scaling.tf) watch.
        DROP_BUCKET           = module.s3.bucket_name
        CHURNOPS_HOME         = "/tmp/churnops"
        OPS_METRICS_NAMESPACE = local.ops_metrics_namespace
        # MLflow's client reads its basic-auth login from these variables: the worker's
        # own user (EDIT on its experiment and model), not the admin.
        MLFLOW_TRACKING_USERNAME = local.mlflow_worker_user
      })
      secrets = {
        DATABASE_URL             = local.db_url_secrets["metrics"]
        PREFECT_API_AUTH_STRING  = local.credential_refs.prefect_auth_string
        MLFLOW_TRACKING_PASSWORD = local.credential_refs.mlflow_worker
        EVIDENTLY_SECRET         = local.credential_refs.evidently_secret
      }
    }

    evidently = {
      image  = local.images.orchestration
      port   = local.listeners.evidently.port
      cpu    = try(local.sizes.evidently.cpu, 512)
      memory = try(local.sizes.evidently.memory, 1024)
      # The workspace is on EFS (efs.tf): reports outlive the task. The worker
      # writes them through this UI's API, so only this task mounts it.
      command = ["evidently", "ui", "--host", "0.0.0.0", "--port", tostring(local.listeners.evidently.port), "--workspace", local.evidently_workspace.container_path]
      volumes = { workspace = local.evidently_workspace }
      health_check = {
        command = concat(local.http_check, ["http://127.0.0.1:${local.listeners.evidently.port}${local.listeners.evidently.health_path}"])
      }
      # Writes (the worker adding runs) need the secret; reading is behind the load balancer's sign-in.
      secrets = { EVIDENTLY_SECRET = local.credential_refs.evidently_secret }
    }

    grafana = {
      image  = local.images.grafana
      port   = local.listeners.grafana.port
      cpu    = try(local.sizes.grafana.cpu, 256)
      memory = try(local.sizes.grafana.memory, 512)
      # Grafana's Alpine image has busybox wget (and no Python).
      health_check = {
        command = ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:${local.listeners.grafana.port}${local.listeners.grafana.health_path} || exit 1"]
      }
      environment = {
        METRICS_DB_HOST    = "${module.rds.address}:${module.rds.port}"
        METRICS_DB_NAME    = module.rds.roles.grafana.database
        METRICS_DB_USER    = module.rds.roles.grafana.name
        GF_SERVER_ROOT_URL = local.public_urls.grafana
      }
      secrets = {
        METRICS_DB_PASSWORD        = "${module.rds.roles.grafana.secret_arn}:password::"
        GF_SECURITY_ADMIN_PASSWORD = "${aws_secretsmanager_secret.grafana_admin.arn}:password::"
      }
    }
  }
}

# ------------------------------------------------------------------ grafana admin
# Generated by Secrets Manager and written write-only: never in the plan or the state.
ephemeral "aws_secretsmanager_random_password" "grafana_admin" {
  password_length     = 24
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "grafana_admin" {
  # checkov:skip=CKV2_AWS_57:Grafana reads its admin password at start (its own database is in the task); rotating is a new secret_string_wo_version and a redeploy, there is no rotation Lambda.
  name                    = "${local.name}/grafana/admin"
  description             = "Grafana admin user"
  kms_key_id              = aws_kms_key.platform.arn
  recovery_window_in_days = var.secret_recovery_window_days
}

resource "aws_secretsmanager_secret_version" "grafana_admin" {
  secret_id = aws_secretsmanager_secret.grafana_admin.id
  secret_string_wo = jsonencode({
    username = "admin"
    password = ephemeral.aws_secretsmanager_random_password.grafana_admin.random_password
  })
  # A new number writes a new password (then redeploy Grafana).
  secret_string_wo_version = 1
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

  # The bucket is versioned: a move copies and deletes exactly the version it claimed,
  # which S3 authorizes as GetObjectVersion and DeleteObjectVersion (not GetObject and
  # DeleteObject); an upload cut short is aborted (the drop storage, churnops.drop.storage).
  statement {
    sid = "ReadWriteDataPrefixes"
    actions = [
      "s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:AbortMultipartUpload",
      "s3:DeleteObject", "s3:DeleteObjectVersion",
    ]
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

  # The operational metrics (alarms.tf, scaling.tf). PutMetricData has no resource ARN:
  # the condition keeps it to ChurnOps' namespace.
  statement {
    sid       = "PublishOpsMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [local.ops_metrics_namespace]
    }
  }

  # A runner protects its own task from scale-in while a run executes (through the ECS agent).
  statement {
    sid       = "ProtectOwnTasks"
    actions   = ["ecs:UpdateTaskProtection"] # set, never read (runner.task_protection)
    resources = ["arn:${data.aws_partition.current.partition}:ecs:${local.region}:${local.account_id}:task/${local.name}/*"]

    # The worker's tasks only (the service's tags propagate to its tasks).
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/churnops:service"
      values   = ["worker"]
    }
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
