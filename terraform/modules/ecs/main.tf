data "aws_region" "current" {}

locals {
  region    = data.aws_region.current.name
  namespace = "${var.name}.internal"

  # Secret ARN of a `valueFrom` reference (which may end in ":json-key::").
  secret_arns = {
    for svc, s in var.services : svc => distinct([
      for ref in concat(values(s.secrets), s.init == null ? [] : values(s.init.secrets)) :
      join(":", slice(split(":", ref), 0, 7))
    ])
  }

  load_balanced = { for svc, s in var.services : svc => s if s.port != null && contains(keys(var.target_group_arns), svc) }
  discoverable  = { for svc, s in var.services : svc => s if s.port != null }

  log_configuration = {
    for svc, s in var.services : svc => {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service[svc].name
        awslogs-region        = local.region
        awslogs-stream-prefix = svc
      }
    }
  }

  # An init container needs no health check: it is not essential, runs to its end
  # and the service's container starts only on its SUCCESS (dependsOn below).
  containers = {
    for svc, s in var.services : svc => concat(
      s.init == null ? [] : [{
        name             = "init"
        image            = coalesce(s.init.image, s.image)
        essential        = false
        command          = s.init.command
        environment      = [for k, v in merge(var.environment, s.init.environment) : { name = k, value = v }]
        secrets          = [for k, v in s.init.secrets : { name = k, valueFrom = v }]
        logConfiguration = local.log_configuration[svc]
      }],
      [{
        name         = svc
        image        = s.image
        essential    = true
        command      = s.command
        portMappings = s.port == null ? [] : [{ containerPort = s.port, protocol = "tcp" }]
        environment  = [for k, v in merge(var.environment, s.environment) : { name = k, value = v }]
        secrets      = [for k, v in s.secrets : { name = k, valueFrom = v }]
        dependsOn    = s.init == null ? [] : [{ containerName = "init", condition = "SUCCESS" }]
        mountPoints  = [for name, v in s.volumes : { sourceVolume = name, containerPath = v.container_path, readOnly = false }]
        healthCheck = s.health_check == null ? null : {
          command     = s.health_check.command
          interval    = s.health_check.interval
          timeout     = s.health_check.timeout
          retries     = s.health_check.retries
          startPeriod = s.health_check.start_period
        }
        # SIGTERM, then this long (Fargate allows 120 s) before SIGKILL: time to drain.
        stopTimeout = s.stop_timeout
        # The servers write caches and temporary files under their home.
        readonlyRootFilesystem = false
        # An init process as PID 1: it reaps orphans (MLflow's set-up, ECS Exec's agent)
        # and passes the stop signal on.
        linuxParameters  = { initProcessEnabled = true }
        logConfiguration = local.log_configuration[svc]
      }],
    )
  }
}

# ------------------------------------------------------------------ cluster
resource "aws_ecs_cluster" "this" {
  # checkov:skip=CKV_AWS_65:Container Insights is a variable (container_insights): on by default, off in the minimal profile to save its cost.
  name = var.name

  setting {
    name  = "containerInsights"
    value = var.container_insights ? "enabled" : "disabled"
  }

  # ECS Exec sessions (`make tunnel`): encrypted with the platform key and logged.
  configuration {
    execute_command_configuration {
      kms_key_id = var.kms_key_arn
      logging    = "OVERRIDE"

      log_configuration {
        cloud_watch_encryption_enabled = true
        cloud_watch_log_group_name     = aws_cloudwatch_log_group.exec.name
      }
    }
  }

  depends_on = [aws_cloudwatch_log_group.container_insights]
}

resource "aws_cloudwatch_log_group" "exec" {
  name              = "/ecs/${var.name}/exec-sessions"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

# Container Insights' performance logs: retention and the platform key, not AWS's defaults.
resource "aws_cloudwatch_log_group" "container_insights" {
  count = var.container_insights ? 1 : 0

  name              = "/aws/ecs/containerinsights/${var.name}/performance"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_service_discovery_private_dns_namespace" "this" {
  name        = local.namespace
  description = "Service discovery of ${var.name}: <service>.${local.namespace}"
  vpc         = var.vpc_id
}

resource "aws_service_discovery_service" "this" {
  for_each = local.discoverable

  name = each.key

  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.this.id
    routing_policy = "MULTIVALUE"

    dns_records {
      ttl  = 10
      type = "A"
    }
  }

  health_check_custom_config {
    failure_threshold = 1
  }
}

# ------------------------------------------------------------------ network
# One security group per service (and per one-off task): a trust zone each. In: the
# load balancer on the service's port, the callers named in var.security_groups,
# var.extra_ingress. Out: HTTPS (AWS APIs, images), the services it calls; the root
# module adds the database and NFS. Rules are separate resources, none inline.
locals {
  calls = merge([
    for from, g in var.security_groups : {
      for to in g.calls : "${from}>${to}" => { from = from, to = to, port = var.security_groups[to].port }
    }
  ]...)

  # Every way in, (source group, port) into a service's group: the load balancer (keyed
  # by the service), a service it calls ("from>to"), the extra ones (their description).
  ingress = merge(
    { for k, port in var.load_balancer_ports : k => { to = k, port = port, source = var.alb_security_group_id, description = "${k} from the load balancer" } },
    { for k, c in local.calls : k => { to = c.to, port = c.port, source = aws_security_group.service[c.from].id, description = "${c.to} from ${c.from}" } },
    { for k, e in var.extra_ingress : k => { to = e.service, port = var.security_groups[e.service].port, source = e.security_group_id, description = k } },
  )
  # And its way out of the source group, where the source is the load balancer or a service.
  egress = merge(
    { for k, port in var.load_balancer_ports : k => { group = var.alb_security_group_id, port = port, to = k, description = "To the ${k} tasks" } },
    { for k, c in local.calls : k => { group = aws_security_group.service[c.from].id, port = c.port, to = c.to, description = "${c.from} to ${c.to}" } },
  )
}

resource "aws_security_group" "service" {
  for_each = var.security_groups

  name        = "${var.name}-${each.key}"
  description = "ECS ${each.key} of ${var.name}"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "calls" {
  for_each = local.ingress

  security_group_id            = aws_security_group.service[each.value.to].id
  description                  = each.value.description
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = each.value.source
}

resource "aws_vpc_security_group_egress_rule" "calls" {
  for_each = local.egress

  security_group_id            = each.value.group
  description                  = each.value.description
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.service[each.value.to].id
}

# AWS APIs (Secrets Manager, ECR, logs, SNS, CloudWatch) through the NAT or an
# interface endpoint, and S3 through its gateway endpoint: HTTPS only.
resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = var.security_groups

  security_group_id = aws_security_group.service[each.key].id
  description       = "HTTPS to AWS APIs"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# ------------------------------------------------------------------ logs
resource "aws_cloudwatch_log_group" "service" {
  for_each = var.services

  name              = "/ecs/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

# ------------------------------------------------------------------ roles
data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# Execution role, one per service: pull its image, write its logs, read its secrets.
resource "aws_iam_role" "execution" {
  for_each = var.services

  name               = substr("${var.name}-${each.key}-exec", 0, 64)
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "execution" {
  for_each = var.services

  statement {
    sid = "EcrAuth"
    # GetAuthorizationToken has no resource-level permissions.
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "PullImages"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = var.ecr_repository_arns
  }

  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.service[each.key].arn}:*"]
  }

  dynamic "statement" {
    for_each = length(local.secret_arns[each.key]) > 0 ? [1] : []

    content {
      sid       = "ReadOwnSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = local.secret_arns[each.key]
    }
  }

  statement {
    sid       = "DecryptWithPlatformKey"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "execution" {
  for_each = var.services

  name   = "execution"
  role   = aws_iam_role.execution[each.key].id
  policy = data.aws_iam_policy_document.execution[each.key].json
}

# Task role, one per service, with only the permissions its application needs.
resource "aws_iam_role" "task" {
  for_each = var.services

  name               = substr("${var.name}-${each.key}-task", 0, 64)
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy" "task" {
  for_each = var.task_policies

  name   = "application"
  role   = aws_iam_role.task[each.key].id
  policy = each.value
}

# ECS Exec: the SSM agent in the task opens its channels with the task role, and
# encrypts and logs the session with the cluster's key and log group.
data "aws_iam_policy_document" "exec" {
  statement {
    sid       = "EncryptSessions"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }

  statement {
    sid       = "LogSessions"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.exec.arn}:*"]
  }

  statement {
    sid = "FindSessionLogGroup"
    # DescribeLogGroups has no resource-level permissions.
    actions   = ["logs:DescribeLogGroups"]
    resources = ["*"]
  }

  statement {
    sid = "EcsExecChannels"
    # The ssmmessages actions have no resource-level permissions.
    actions = [
      "ssmmessages:CreateControlChannel",
      "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel",
      "ssmmessages:OpenDataChannel",
    ]
    resources = ["*"]
  }
}

# EFS volumes: mounted with the task role (IAM authorisation), through their access point only.
data "aws_iam_policy_document" "volumes" {
  for_each = { for svc, s in var.services : svc => s if length(s.volumes) > 0 }

  dynamic "statement" {
    for_each = each.value.volumes

    content {
      sid       = "Mount${replace(title(replace(statement.key, "-", " ")), " ", "")}"
      actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
      resources = [statement.value.file_system_arn]

      condition {
        test     = "StringEquals"
        variable = "elasticfilesystem:AccessPointArn"
        values   = [statement.value.access_point_arn]
      }
    }
  }
}

resource "aws_iam_role_policy" "volumes" {
  for_each = data.aws_iam_policy_document.volumes

  name   = "volumes"
  role   = aws_iam_role.task[each.key].id
  policy = each.value.json
}

resource "aws_iam_role_policy" "exec" {
  for_each = { for svc, s in var.services : svc => s if s.enable_execute_command }

  name   = "ecs-exec"
  role   = aws_iam_role.task[each.key].id
  policy = data.aws_iam_policy_document.exec.json
}

# ------------------------------------------------------------------ tasks and services
resource "aws_ecs_task_definition" "service" {
  for_each = var.services

  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.execution[each.key].arn
  task_role_arn            = aws_iam_role.task[each.key].arn
  container_definitions    = jsonencode(local.containers[each.key])

  dynamic "volume" {
    for_each = each.value.volumes

    content {
      name = volume.key

      efs_volume_configuration {
        file_system_id     = volume.value.file_system_id
        transit_encryption = "ENABLED"

        authorization_config {
          access_point_id = volume.value.access_point_id
          iam             = "ENABLED"
        }
      }
    }
  }

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
}

resource "aws_ecs_service" "service" {
  for_each = { for k, s in var.services : k => s if !s.one_off }

  name                              = each.key
  cluster                           = aws_ecs_cluster.this.id
  task_definition                   = aws_ecs_task_definition.service[each.key].arn
  desired_count                     = each.value.desired_count
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  propagate_tags                    = "SERVICE"
  tags                              = { "churnops:service" = each.key }
  enable_execute_command            = each.value.enable_execute_command
  health_check_grace_period_seconds = contains(keys(local.load_balanced), each.key) ? 180 : null
  # Rolling: the new task is healthy before the old one gets SIGTERM (and its
  # stop_timeout to finish the run in progress); a deployment that never gets
  # healthy is rolled back by the circuit breaker.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  wait_for_steady_state              = false

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.service[each.key].id]
    assign_public_ip = var.assign_public_ip
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  dynamic "load_balancer" {
    for_each = contains(keys(local.load_balanced), each.key) ? [each.value.port] : []

    content {
      target_group_arn = var.target_group_arns[each.key]
      container_name   = each.key
      container_port   = load_balancer.value
    }
  }

  dynamic "service_registries" {
    for_each = contains(keys(local.discoverable), each.key) ? [1] : []

    content {
      registry_arn = aws_service_discovery_service.this[each.key].arn
    }
  }

  depends_on = [aws_iam_role_policy.execution]
}
