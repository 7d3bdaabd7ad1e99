locals {
  https    = var.certificate_arn != null
  protocol = local.https ? "HTTPS" : "HTTP"
  scheme   = lower(local.protocol)
}

data "aws_vpc" "this" {
  id = var.vpc_id
}

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Load balancer of ${var.name}: UI ports from the allowed CIDR blocks only"
  vpc_id      = var.vpc_id

  dynamic "ingress" {
    for_each = var.listeners

    content {
      description = "${ingress.key} UI from the allowed CIDR blocks"
      from_port   = ingress.value.port
      to_port     = ingress.value.port
      protocol    = "tcp"
      cidr_blocks = var.allowed_cidr_blocks
    }
  }

  egress {
    description = "To the ECS tasks inside the VPC"
    from_port   = 0
    to_port     = 65535
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.this.cidr_block]
  }
}

resource "aws_lb" "this" {
  # checkov:skip=CKV_AWS_91:Access logs would need a log bucket with the ELB account's policy per region; left to the operator.
  # checkov:skip=CKV2_AWS_28:WAF is not provisioned; ingress is limited to allowed_cidr_blocks instead.
  # checkov:skip=CKV_AWS_150:Deletion protection is a variable (deletion_protection) so that `make destroy` works on staging.
  name                       = var.name
  load_balancer_type         = "application"
  internal                   = var.internal
  subnets                    = var.subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  idle_timeout               = 120
}

resource "aws_lb_target_group" "this" {
  # checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the targets are private tasks inside the VPC.
  for_each = var.listeners

  name                 = substr("${var.name}-${each.key}", 0, 32)
  port                 = each.value.port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    path                = each.value.health_path
    matcher             = "200-399"
    interval            = 30
    timeout             = 10
    healthy_threshold   = 2
    unhealthy_threshold = 5
  }
}

resource "aws_lb_listener" "this" {
  # checkov:skip=CKV_AWS_2:HTTPS when certificate_arn is set; HTTP only without a certificate (staging behind allowed CIDR blocks).
  # checkov:skip=CKV_AWS_103:TLS 1.2+ policy is used whenever HTTPS is on (see ssl_policy).
  # checkov:skip=CKV2_AWS_20:One listener per UI port; there is no port-80 listener to redirect.
  for_each = var.listeners

  load_balancer_arn = aws_lb.this.arn
  port              = each.value.port
  protocol          = local.protocol
  ssl_policy        = local.https ? "ELBSecurityPolicy-TLS13-1-2-2021-06" : null
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this[each.key].arn
  }
}
