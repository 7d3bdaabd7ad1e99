variable "name" {
  description = "Name of the cluster and prefix of its resources."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the tasks."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the tasks."
  type        = list(string)
}

variable "assign_public_ip" {
  description = "Give the tasks a public IP (only when they run in public subnets)."
  type        = bool
  default     = false
}

variable "alb_security_group_id" {
  description = "Security group of the load balancer, allowed to reach the load-balanced ports."
  type        = string
}

variable "target_group_arns" {
  description = "Target group per load-balanced service (same key as var.services)."
  type        = map(string)
}

variable "load_balancer_ports" {
  description = "Container port per load-balanced service, opened to the load balancer's security group (kept apart from var.services so the security group does not depend on the task definitions)."
  type        = map(number)
}

variable "security_groups" {
  description = "One security group per service and one-off task (same keys as var.services, kept apart so the groups do not depend on the task definitions): its port (null: it listens on none) and the services it calls on their ports."
  type = map(object({
    port  = optional(number)
    calls = optional(list(string), [])
  }))
}

variable "extra_ingress" {
  description = "Further security groups allowed into one service's port, by description (e.g. the Lambda into the Prefect API)."
  type = map(object({
    service           = string
    security_group_id = string
  }))
  default = {}
}

variable "task_policies" {
  description = "IAM policy (JSON) of the task role per service; services not listed get a role without permissions."
  type        = map(string)
  default     = {}
}

variable "ecr_repository_arns" {
  description = "Repositories the tasks pull their images from."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key of the log groups and secrets."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the log groups."
  type        = number
  default     = 365
}

variable "environment" {
  description = "Environment variables of every container of every task, init containers too (a service's own win)."
  type        = map(string)
  default     = {}
}

variable "container_insights" {
  description = "Container Insights on the cluster (about $35 a month for the five services)."
  type        = bool
  default     = false
}

variable "services" {
  description = <<-EOT
    Services by name. `port` null: no listener and no service discovery.
    `secrets` maps environment names to Secrets Manager `valueFrom` references.
    `health_check` is required: the container's own check (ECS healthCheck).
    `stop_timeout`: seconds between SIGTERM and SIGKILL (at most 120 on Fargate).
    `volumes`: EFS access points mounted at `container_path`, with IAM authorisation.
    `init`, when set, runs first in the same task (the service's image unless
    `init.image`) and must exit 0; it has no health check (not essential, and the
    service's container waits for its SUCCESS).
  EOT
  type = map(object({
    image         = string
    command       = optional(list(string))
    port          = optional(number)
    cpu           = optional(number, 512)
    memory        = optional(number, 1024)
    desired_count = optional(number, 1)
    # A task definition run on demand (RunTask), with no ECS service.
    one_off = optional(bool, false)
    # ECS Exec (SSM): `make tunnel` forwards a local port into the task; its task role needs ssmmessages.
    enable_execute_command = optional(bool, false)
    environment            = optional(map(string), {})
    secrets                = optional(map(string), {})
    stop_timeout           = optional(number, 30)
    # Required for a service; a one-off task runs to its end and has none.
    health_check = optional(object({
      command      = list(string)
      start_period = optional(number, 60)
      interval     = optional(number, 30)
      timeout      = optional(number, 5)
      retries      = optional(number, 3)
    }))
    volumes = optional(map(object({
      file_system_id   = string
      file_system_arn  = string
      access_point_id  = string
      access_point_arn = string
      container_path   = string
    })), {})
    init = optional(object({
      image       = optional(string)
      command     = list(string)
      environment = optional(map(string), {})
      secrets     = optional(map(string), {})
    }))
  }))
}
