# One listener: HTTPS 443, where every UI is a host rule that signs the user in
# (Cognito or OIDC) before it forwards. The load balancer never forwards a
# request it has not authenticated. Without a certificate (allow_insecure_http,
# development only) it listens on HTTP 80 and forwards nothing: ALB sign-in
# needs HTTPS, so the UIs are then reached through `make tunnel` only.

data "aws_caller_identity" "current" {}

locals {
  https   = var.certificate_arn != null
  port    = local.https ? 443 : 80
  forward = local.https
  uis     = local.forward ? var.uis : {}
  hosts   = { for k, ui in local.uis : k => "${ui.host}.${var.domain}" }
  cognito = local.forward && var.authentication == "cognito"
  oidc    = local.forward && var.authentication == "oidc"
  # Rule priorities in a stable order (the UIs' names sorted).
  priority = { for i, k in sort(keys(local.uis)) : k => 10 * (i + 1) }
}

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Load balancer of ${var.name}: port ${local.port} from the allowed CIDR blocks only"
  vpc_id      = var.vpc_id

  ingress {
    description = local.https ? "HTTPS from the allowed CIDR blocks" : "HTTP (development, forwards nothing) from the allowed CIDR blocks"
    from_port   = local.port
    to_port     = local.port
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidr_blocks
  }

  # Egress is separate rules: the sign-in's below, and one per UI to that UI's
  # security group on its port (module ecs), none to the whole VPC.
}

resource "aws_vpc_security_group_egress_rule" "sign_in" {
  # checkov:skip=CKV_AWS_382:HTTPS only (443) to the identity provider, whose addresses are not fixed.
  count = local.forward ? 1 : 0

  security_group_id = aws_security_group.alb.id
  description       = "Sign-in: the load balancer calls the identity provider (token and user-info endpoints)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_lb" "this" {
  # checkov:skip=CKV2_AWS_28:No WAF: the one listener answers only allowed_cidr_blocks and signs every user in before it forwards.
  # checkov:skip=CKV_AWS_150:Deletion protection is a variable (deletion_protection) so that `make destroy` works on staging.
  # checkov:skip=CKV2_AWS_20:Port 80 exists only with allow_insecure_http (no certificate: no HTTPS to redirect to); with a certificate there is no port 80 at all.
  name                       = var.name
  load_balancer_type         = "application"
  internal                   = var.internal
  subnets                    = var.subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  idle_timeout               = 120

  # Who reached the load balancer, and which host and path (audit.tf's bucket).
  access_logs {
    bucket  = var.access_logs_bucket
    prefix  = "alb"
    enabled = true
  }
}

resource "aws_lb_target_group" "this" {
  # checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the targets are private tasks inside the VPC.
  for_each = local.uis

  # At most 32 characters, not ending with a dash ("<name>-prefect-" cut there); the root
  # module's variables keep <name> short enough for the UIs' names to stay apart.
  name                 = trimsuffix(substr("${var.name}-${each.key}", 0, 32), "-")
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

# ------------------------------------------------------------------ listeners
resource "aws_lb_listener" "https" {
  count = local.https ? 1 : 0

  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type = "fixed-response"

    fixed_response {
      content_type = "text/plain"
      message_body = "Unknown host: the UIs are at <ui>.${coalesce(var.domain, "<ui_domain>")}"
      status_code  = "404"
    }
  }

  lifecycle {
    precondition {
      condition     = var.domain != null
      error_message = "certificate_arn needs ui_domain: each UI is served at https://<ui>.<ui_domain>."
    }
    precondition {
      condition     = var.authentication != "oidc" || (var.oidc != null && var.oidc_client_secret != null)
      error_message = "ui_authentication = \"oidc\" needs ui_oidc and ui_oidc_client_secret."
    }
  }
}

resource "aws_lb_listener" "http" {
  # checkov:skip=CKV_AWS_2:Exists only with allow_insecure_http (development, no certificate); it forwards nothing.
  # checkov:skip=CKV_AWS_103:Plain HTTP only with allow_insecure_http; it answers 403 and forwards nothing.
  count = local.https ? 0 : 1

  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "fixed-response"

    fixed_response {
      content_type = "text/plain"
      message_body = "HTTPS is off (allow_insecure_http): open the UIs with `make tunnel SERVICE=<ui>`."
      status_code  = "403"
    }
  }

  lifecycle {
    precondition {
      condition     = var.allow_insecure_http
      error_message = "HTTPS is required: set certificate_arn (an ACM certificate for *.<ui_domain>), or allow_insecure_http = true for development (the load balancer then forwards nothing; use `make tunnel`)."
    }
    precondition {
      condition     = !contains(var.allowed_cidr_blocks, "0.0.0.0/0")
      error_message = "allow_insecure_http opens port 80: narrow allowed_cidr_blocks to your own addresses (not 0.0.0.0/0)."
    }
  }
}

# Each UI: sign in first (order 1), then forward (order 2).
resource "aws_lb_listener_rule" "ui" {
  for_each = local.uis

  listener_arn = aws_lb_listener.https[0].arn
  priority     = local.priority[each.key]

  condition {
    host_header {
      values = [local.hosts[each.key]]
    }
  }

  dynamic "action" {
    for_each = local.cognito ? [1] : []

    content {
      type  = "authenticate-cognito"
      order = 1

      authenticate_cognito {
        user_pool_arn              = aws_cognito_user_pool.ui[0].arn
        user_pool_client_id        = aws_cognito_user_pool_client.ui[0].id
        user_pool_domain           = aws_cognito_user_pool_domain.ui[0].domain
        on_unauthenticated_request = "authenticate"
        scope                      = "openid email"
        session_timeout            = var.session_timeout_seconds
      }
    }
  }

  dynamic "action" {
    for_each = local.oidc ? [var.oidc] : []

    content {
      type  = "authenticate-oidc"
      order = 1

      authenticate_oidc {
        issuer                     = action.value.issuer
        authorization_endpoint     = action.value.authorization_endpoint
        token_endpoint             = action.value.token_endpoint
        user_info_endpoint         = action.value.user_info_endpoint
        client_id                  = action.value.client_id
        client_secret              = var.oidc_client_secret
        on_unauthenticated_request = "authenticate"
        scope                      = "openid email"
        session_timeout            = var.session_timeout_seconds
      }
    }
  }

  action {
    type             = "forward"
    order            = 2
    target_group_arn = aws_lb_target_group.this[each.key].arn
  }
}

# ------------------------------------------------------------------ cognito
resource "aws_cognito_user_pool" "ui" {
  count = local.cognito ? 1 : 0

  name                     = "${var.name}-ui"
  username_attributes      = ["email"]
  auto_verified_attributes = ["email"]
  mfa_configuration        = "ON" # TOTP at every sign-in (an authenticator app)
  deletion_protection      = var.deletion_protection ? "ACTIVE" : "INACTIVE"

  # Users are invited (var.cognito_users); nobody signs up by themselves.
  admin_create_user_config {
    allow_admin_create_user_only = true
  }

  software_token_mfa_configuration {
    enabled = true
  }

  password_policy {
    minimum_length                   = 14
    require_lowercase                = true
    require_uppercase                = true
    require_numbers                  = true
    require_symbols                  = true
    temporary_password_validity_days = 3
  }

  account_recovery_setting {
    recovery_mechanism {
      name     = "verified_email"
      priority = 1
    }
  }
}

resource "aws_cognito_user_pool_domain" "ui" {
  count = local.cognito ? 1 : 0

  # Hosted sign-in page: https://<domain>.auth.<region>.amazoncognito.com (unique per region).
  domain       = "${var.name}-${data.aws_caller_identity.current.account_id}"
  user_pool_id = aws_cognito_user_pool.ui[0].id
}

resource "aws_cognito_user_pool_client" "ui" {
  count = local.cognito ? 1 : 0

  name                                 = "${var.name}-alb"
  user_pool_id                         = aws_cognito_user_pool.ui[0].id
  generate_secret                      = true
  allowed_oauth_flows_user_pool_client = true
  allowed_oauth_flows                  = ["code"]
  allowed_oauth_scopes                 = ["openid", "email"]
  supported_identity_providers         = ["COGNITO"]
  callback_urls                        = [for host in values(local.hosts) : "https://${host}/oauth2/idpresponse"]
  prevent_user_existence_errors        = "ENABLED"
}

resource "aws_cognito_user" "ui" {
  for_each = local.cognito ? toset(var.cognito_users) : toset([])

  user_pool_id             = aws_cognito_user_pool.ui[0].id
  username                 = each.value
  desired_delivery_mediums = ["EMAIL"]

  attributes = {
    email          = each.value
    email_verified = true
  }
}
