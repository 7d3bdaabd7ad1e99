# ---------------------------------------------------------------- general
variable "aws_region" {
  description = "AWS region to deploy the platform into."
  type        = string
}

variable "project" {
  description = "Name prefix of every resource."
  type        = string
  default     = "churnops"

  validation {
    condition     = length(var.project) <= 21 && can(regex("^[a-z](-?[a-z0-9])+$", var.project))
    error_message = "project must be 2-21 lowercase letters, digits or single dashes, starting with a letter and ending with a letter or digit (the database's names allow no other)."
  }
}

variable "environment" {
  description = "Environment name (stg, prod, ...), part of every resource name."
  type        = string
  default     = "stg"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,9}$", var.environment))
    error_message = "environment must be 2-10 lowercase letters or digits, starting with a letter."
  }

  validation {
    condition     = length(var.project) + length(var.environment) <= 29
    error_message = "project and environment may have 29 characters together: <project>-<environment>-<ui> names the load balancer's target groups, cut at 32 characters, and must still tell the four UIs apart."
  }
}

variable "tags" {
  description = "Extra tags applied to every resource."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------- network
variable "vpc_id" {
  description = "Id of the existing VPC to deploy into."
  type        = string

  # A placeholder plans (nothing looks the VPC up) and fails half-way through the apply.
  validation {
    condition     = !strcontains(var.vpc_id, "REPLACE")
    error_message = "vpc_id still holds the template's REPLACE placeholder: fill it in (vars/<env>.tfvars)."
  }
}

variable "public_subnet_ids" {
  description = "Subnets of the load balancer (at least two, in different AZs)."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 2
    error_message = "The load balancer needs at least two subnets in different availability zones."
  }

  validation {
    condition     = alltrue([for s in var.public_subnet_ids : !strcontains(s, "REPLACE")])
    error_message = "public_subnet_ids still holds the template's REPLACE placeholder: fill it in (vars/<env>.tfvars)."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets (with a NAT route) for the ECS tasks, the database and the Evidently workspace's EFS mount targets (one subnet per availability zone). Empty: the public subnets are used and the tasks get a public IP."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.private_subnet_ids : !strcontains(s, "REPLACE")])
    error_message = "private_subnet_ids still holds the template's REPLACE placeholder: fill it in (vars/<env>.tfvars)."
  }
}

variable "allowed_cidr_blocks" {
  description = "CIDR blocks allowed to reach the load balancer's one listener (HTTPS 443; HTTP 80 with allow_insecure_http, never from 0.0.0.0/0). Every UI behind it signs the user in first."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidr_blocks) > 0 && alltrue([for c in var.allowed_cidr_blocks : can(cidrnetmask(c))])
    error_message = "allowed_cidr_blocks must be a non-empty list of IPv4 CIDR blocks."
  }
}

variable "internal_load_balancer" {
  description = "Make the load balancer internal (reachable only inside the VPC / over VPN)."
  type        = bool
  default     = false
}

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener, covering <ui>.<ui_domain> of every UI (e.g. *.<ui_domain>). Required unless allow_insecure_http."
  type        = string
  default     = null

  validation {
    condition     = var.certificate_arn == null ? true : !strcontains(var.certificate_arn, "REPLACE")
    error_message = "certificate_arn still holds the template's REPLACE placeholder: fill it in (vars/<env>.tfvars)."
  }
}

variable "allow_insecure_http" {
  description = "Development only: no certificate; the load balancer listens on HTTP 80 and forwards nothing, the UIs are reached through `make tunnel`."
  type        = bool
  default     = false
}

variable "ui_domain" {
  description = "Domain of the UIs: https://mlflow.<ui_domain>, prefect., evidently., grafana. (required with certificate_arn)."
  type        = string
  default     = null

  validation {
    condition     = var.ui_domain == null ? true : !strcontains(var.ui_domain, "REPLACE")
    error_message = "ui_domain still holds the template's REPLACE placeholder: fill it in (vars/<env>.tfvars)."
  }
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone of ui_domain: alias records for the UIs' host names. Null: create the DNS records yourself (output ui_hosts)."
  type        = string
  default     = null
}

variable "ui_authentication" {
  description = "How the load balancer signs users in before it forwards to a UI: \"cognito\" (a user pool made here, users from ui_users) or \"oidc\" (ui_oidc)."
  type        = string
  default     = "cognito"
}

variable "ui_users" {
  description = "E-mail addresses given a user in the Cognito user pool (Cognito e-mails each a temporary password; nobody can sign up alone)."
  type        = list(string)
  default     = []

  # Cognito refuses a user name that is not an e-mail address, mid-apply.
  validation {
    condition     = alltrue([for u in var.ui_users : can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", u)) && !strcontains(u, "REPLACE")])
    error_message = "ui_users must be e-mail addresses (not the template's REPLACE placeholder)."
  }
}

variable "ui_oidc" {
  description = "Your OpenID Connect provider when ui_authentication = \"oidc\": issuer, authorization_endpoint, token_endpoint, user_info_endpoint, client_id."
  type = object({
    issuer                 = string
    authorization_endpoint = string
    token_endpoint         = string
    user_info_endpoint     = string
    client_id              = string
  })
  default = null
}

variable "ui_oidc_client_secret" {
  description = "Client secret of the OIDC client (the listener rule keeps it, so it is in the state); pass it as TF_VAR_ui_oidc_client_secret."
  type        = string
  default     = null
  sensitive   = true
}

variable "tunnel_enabled" {
  description = "ECS Exec on the UIs' tasks, for `make tunnel SERVICE=<ui>` (an SSM port forward, authorized by IAM; attach the output tunnel_operator_policy_arn to whoever may open one). Off by default: an exec session sees the container's environment, secrets included; turn it on in development."
  type        = bool
  default     = false
}

variable "container_insights" {
  description = "Container Insights on the ECS cluster (per-task CPU, memory and network metrics; about $35 a month at the default sizes). Off in the minimal profile."
  type        = bool
  default     = true
}

variable "s3_endpoint_route_table_ids" {
  description = "Route tables of the task subnets for an S3 gateway endpoint (free: S3 and image layers without the NAT). Empty: none is made (the VPC may have one already)."
  type        = list(string)
  default     = []
}

variable "service_credentials_version" {
  description = "Version of the generated Prefect, MLflow and Evidently credentials (write-only): bump it to rotate them, then redeploy the services."
  type        = number
  default     = 1
}

# ---------------------------------------------------------------- storage, alerts
variable "bucket_name" {
  description = "Name of the drop bucket. Null: <project>-<environment>-drop-<account id>."
  type        = string
  default     = null

  # S3's rule for a name; otherwise only CreateBucket refuses it, mid-apply.
  validation {
    condition     = var.bucket_name == null ? true : can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be 3-63 lowercase letters, digits, dots or dashes, starting and ending with a letter or digit (S3's rule)."
  }
}

variable "bucket_force_destroy" {
  description = "Let `terraform destroy` delete a non-empty drop bucket (all customer files in it are lost)."
  type        = bool
  default     = false
}

variable "processed_retention_days" {
  description = "Days after which files under data/processed/ (and data/errored/, data/logs/) expire."
  type        = number
  default     = 90
}

variable "s3_deny_insecure_transport" {
  description = "Deny non-TLS requests to the drop bucket. Keep true; false exists only for the plain-HTTP emulator of `make apply-local`."
  type        = bool
  default     = true
}

variable "alert_email" {
  description = "E-mail address subscribed to the alerts topic (it must confirm the subscription)."
  type        = string

  validation {
    condition     = can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alert_email)) && !strcontains(var.alert_email, "REPLACE")
    error_message = "alert_email must be an e-mail address (not the template's REPLACE placeholder)."
  }
}

# ---------------------------------------------------------------- lambda
variable "lambda_enabled" {
  description = "Whether new files under data/input/ and data/labels/ trigger the Lambda (`make disable-lambda` / `make enable-lambda`)."
  type        = bool
  default     = true
}

variable "prefect_api_url_for_lambda" {
  description = "Prefect API URL the Lambda calls. Null: the Prefect server inside the VPC (its Cloud Map name)."
  type        = string
  default     = null
}

variable "secretsmanager_vpc_endpoint" {
  description = "Create a Secrets Manager interface endpoint for the Lambda (needed when the private subnets have no NAT route; always made when private_subnet_ids is empty)."
  type        = bool
  default     = false
}

variable "lambda_reserved_concurrency" {
  description = "Reserved concurrent executions of the Lambda."
  type        = number
  default     = 5

  # 0 throttles every event: files would wait for the reconciler (lambda_enabled pauses).
  validation {
    condition     = var.lambda_reserved_concurrency >= 1
    error_message = "lambda_reserved_concurrency must be at least 1 (0 throttles every event; set lambda_enabled = false to pause the trigger)."
  }
}

# ---------------------------------------------------------------- images
variable "image_tag" {
  description = "Tag of the images in ECR (the deploy workflow pushes the git SHA; tags are immutable)."
  type        = string
}

# ---------------------------------------------------------------- database
variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.micro"
}

variable "db_engine_version" {
  description = "Postgres engine version."
  type        = string
  default     = "16"
}

variable "db_allocated_storage" {
  description = "Allocated storage in GiB."
  type        = number
  default     = 20

  validation {
    condition     = var.db_allocated_storage >= 20
    error_message = "db_allocated_storage must be at least 20 GiB (the minimum of the database's gp3 storage)."
  }
}

variable "db_multi_az" {
  description = "Run the database Multi-AZ."
  type        = bool
  default     = false
}

variable "db_deletion_protection" {
  description = "Protect the database from deletion (set false before `make destroy`)."
  type        = bool
  default     = true
}

variable "db_skip_final_snapshot" {
  description = "Skip the final snapshot when the database is destroyed."
  type        = bool
  default     = false
}

variable "db_backup_retention_days" {
  description = "Days of automated backups."
  type        = number
  default     = 7
}

variable "db_credentials_version" {
  description = "Version of the generated passwords of the services' database roles (flow, Grafana, MLflow, Prefect; write-only, never in the state): bump it to rotate them, then redeploy the services. The master password is RDS-managed."
  type        = number
  default     = 1
}

# ---------------------------------------------------------------- ecs
variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups."
  type        = number
  default     = 365
}

variable "service_sizes" {
  description = "CPU units and memory (MiB) per service (mlflow, \"prefect-server\", worker, evidently, grafana); missing services keep their defaults (services.tf)."
  type = map(object({
    cpu    = number
    memory = number
  }))
  default = {}

  # A misspelt service would keep its default without a word.
  validation {
    condition     = alltrue([for k in keys(var.service_sizes) : contains(["mlflow", "prefect-server", "worker", "evidently", "grafana"], k)])
    error_message = "service_sizes names a service that does not exist: the services are mlflow, \"prefect-server\", worker, evidently and grafana."
  }

  # What Fargate runs (else only ECS's RegisterTaskDefinition refuses it, mid-apply).
  validation {
    condition = alltrue([for s in values(var.service_sizes) : (
      s.cpu == 256 ? contains([512, 1024, 2048], s.memory) :
      contains([512, 1024, 2048, 4096], s.cpu) ? s.memory >= 2 * s.cpu && s.memory <= min(8 * s.cpu, 30720) && s.memory % 1024 == 0 :
      contains([8192, 16384], s.cpu) ? s.memory >= 2 * s.cpu && s.memory <= 7.5 * s.cpu && s.memory % (s.cpu / 2) == 0 :
      false
    )])
    error_message = "service_sizes: Fargate runs cpu 256 with memory 512, 1024 or 2048; cpu 512, 1024, 2048 or 4096 with 2 to 8 times as much memory (at most 30720) in steps of 1024; cpu 8192 or 16384 with 2 to 7.5 times as much in steps of cpu / 2."
  }
}

variable "worker_min_count" {
  description = "Warm runner tasks always running (each runs one flow run at a time; scaling.tf adds more on Prefect's queue depth)."
  type        = number
  default     = 1

  validation {
    condition     = var.worker_min_count >= 1
    error_message = "At least one runner: it also runs the scheduled reconciler."
  }
}

variable "worker_max_count" {
  description = "Most warm runner tasks the autoscaling starts (files processed at once)."
  type        = number
  default     = 4

  validation {
    condition     = var.worker_max_count >= var.worker_min_count
    error_message = "worker_max_count must be at least worker_min_count."
  }
}

# ---------------------------------------------------------------- alarms
variable "alarm_file_age_minutes" {
  description = "Alarm when a file has waited this long in data/input/ (or data/labels/) or in data/processing/."
  type        = number
  default     = 30
}

variable "alarm_db_cpu_percent" {
  description = "Alarm when the database's average CPU stays above this for 15 minutes."
  type        = number
  default     = 80
}

variable "alarm_db_free_storage_percent" {
  description = "Alarm when the database's free storage falls below this share of db_allocated_storage."
  type        = number
  default     = 10
}

variable "secret_recovery_window_days" {
  description = "Recovery window of deleted secrets; 0 deletes them at once (lets an environment be re-created under the same names)."
  type        = number
  default     = 7
}

variable "audit_retention_days" {
  description = "Days the audit bucket keeps the trail's files and the load balancer's access logs."
  type        = number
  default     = 400
}

variable "github_repository" {
  description = "owner/name of the GitHub repository whose workflows deploy this environment: makes its three OIDC roles (github.tf). Null: none."
  type        = string
  default     = null
}

variable "github_oidc_provider_arn" {
  description = "ARN of the account's GitHub OIDC provider when it exists already (one per account); null: github.tf creates it."
  type        = string
  default     = null
}

variable "github_state_bucket" {
  description = "Bucket of the Terraform state (vars/<env>.backend.tfvars), which the plan and push roles read (the push role also writes its lock file)."
  type        = string
  default     = null
}
