variable "name" {
  description = "Name of the load balancer (at most 32 characters)."
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
  description = "CIDR blocks allowed to reach the listeners."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate for HTTPS listeners; null for HTTP."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Deletion protection of the load balancer."
  type        = bool
  default     = false
}

variable "listeners" {
  description = "One listener and target group per UI: listener port (also the container port) and health-check path."
  type = map(object({
    port        = number
    health_path = string
  }))
}
