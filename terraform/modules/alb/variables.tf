variable "name" {
  description = "Name of the load balancer (at most 32 characters) and prefix of its resources."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the load balancer."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the load balancer."
  type        = list(string)
}

variable "internal" {
  description = "Internal load balancer."
  type        = bool
  default     = false
}

variable "allowed_cidr_blocks" {
  description = "CIDR blocks allowed to reach the one listener (443, or 80 with allow_insecure_http)."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener; it must cover <host>.<domain> of every UI."
  type        = string
  default     = null
}

variable "allow_insecure_http" {
  description = "Development only: without a certificate, listen on HTTP 80 and forward nothing (the UIs are reached through `make tunnel`)."
  type        = bool
  default     = false
}

variable "domain" {
  description = "The UIs are served at https://<host>.<domain>; null: the load balancer forwards nothing."
  type        = string
  default     = null
}

variable "authentication" {
  description = "How the load balancer signs users in before it forwards: \"cognito\" (a user pool made here) or \"oidc\" (var.oidc)."
  type        = string
  default     = "cognito"

  validation {
    condition     = contains(["cognito", "oidc"], var.authentication)
    error_message = "authentication must be \"cognito\" or \"oidc\"."
  }
}

variable "cognito_users" {
  description = "E-mail addresses given a user in the Cognito user pool (Cognito mails each a temporary password)."
  type        = list(string)
  default     = []
}

variable "oidc" {
  description = "OpenID Connect provider when authentication = \"oidc\"."
  type = object({
    issuer                 = string
    authorization_endpoint = string
    token_endpoint         = string
    user_info_endpoint     = string
    client_id              = string
  })
  default = null
}

variable "oidc_client_secret" {
  description = "Client secret of the OIDC client (the listener rule holds it, so it is in the state)."
  type        = string
  default     = null
  sensitive   = true
}

variable "session_timeout_seconds" {
  description = "How long a sign-in lasts before the load balancer asks again."
  type        = number
  default     = 43200
}

variable "deletion_protection" {
  description = "Deletion protection of the load balancer."
  type        = bool
  default     = false
}

variable "uis" {
  description = "One target group and host rule per UI: host label (served at <host>.<domain>), container port and health-check path."
  type = map(object({
    host        = string
    port        = number
    health_path = string
  }))
}

variable "access_logs_bucket" {
  description = "S3 bucket of the access logs (prefix alb/); its policy lets the region's ELB log delivery write."
  type        = string
}
