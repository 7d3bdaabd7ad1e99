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
  description = "Master user name (the password is generated)."
  type        = string
  default     = "churnops"
}

variable "readonly_username" {
  description = "Name of the read-only role used by Grafana."
  type        = string
  default     = "grafana_ro"
}

variable "initial_database" {
  description = "Database created with the instance."
  type        = string
  default     = "metrics"
}

variable "databases" {
  description = "One connection-URL secret per key: SQLAlchemy scheme and database name."
  type = map(object({
    scheme   = string
    database = string
  }))
}
