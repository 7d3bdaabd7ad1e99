variable "name" {
  description = "Identifier of the instance and prefix of its secrets."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the instance."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the DB subnet group (private ones where available)."
  type        = list(string)
}

variable "allowed_security_group_ids" {
  description = "Security groups allowed to connect on 5432."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key encrypting storage and secrets."
  type        = string
}

variable "engine_version" {
  description = "Postgres version (major or major.minor)."
  type        = string
  default     = "16"
}

variable "instance_class" {
  description = "Instance class."
  type        = string
  default     = "db.t4g.micro"
}

variable "allocated_storage" {
  description = "Storage in GiB (autoscaling up to four times this)."
  type        = number
  default     = 20
}

variable "multi_az" {
  description = "Multi-AZ deployment."
  type        = bool
  default     = false
}

variable "deletion_protection" {
  description = "Deletion protection."
  type        = bool
  default     = true
}

variable "skip_final_snapshot" {
  description = "Skip the final snapshot on destroy."
  type        = bool
  default     = false
}

variable "backup_retention_days" {
  description = "Days of automated backups."
  type        = number
  default     = 7
}

variable "secret_recovery_window_days" {
  description = "Recovery window of deleted secrets (0 deletes at once)."
  type        = number
  default     = 7
}

variable "master_username" {
  description = "Master user name (its password is RDS-managed, in Secrets Manager)."
  type        = string
  default     = "churnops"
}

variable "initial_database" {
  description = "Database created with the instance."
  type        = string
  default     = "metrics"
}

variable "roles" {
  description = <<-EOT
    One login role per service, by key: `name`, `kind` (owner: owns `database`;
    writer or reader: of the metrics tables in `database`, see churnops
    db_roles) and `scheme`, the SQLAlchemy scheme of the `url` in its secret.
  EOT
  type = map(object({
    name     = string
    kind     = string
    database = string
    scheme   = string
  }))

  validation {
    condition     = alltrue([for r in values(var.roles) : contains(["owner", "writer", "reader"], r.kind)])
    error_message = "A role's kind is owner, writer or reader."
  }
}

variable "credentials_version" {
  description = "Version of the roles' generated passwords: a new number writes new passwords into their secrets (then redeploy the services)."
  type        = number
  default     = 1
}
