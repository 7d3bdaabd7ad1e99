variable "bucket_name" {
  description = "Name of the drop bucket."
  type        = string
}

variable "force_destroy" {
  description = "Delete the bucket even if it still holds objects."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "KMS key of the default server-side encryption."
  type        = string
}

variable "processed_retention_days" {
  description = "Days after which processed, errored and log files expire."
  type        = number
  default     = 90
}

variable "noncurrent_version_days" {
  description = "Days after which noncurrent object versions expire."
  type        = number
  default     = 30
}

variable "lambda_enabled" {
  description = "Whether ObjectCreated events in the drop folders (lambda_prefixes) invoke the Lambda."
  type        = bool
  default     = true
}

variable "lambda_prefixes" {
  description = "Drop folders whose ObjectCreated events invoke the Lambda."
  type        = list(string)
  default     = ["data/input/", "data/labels/"]
}

variable "lambda_function_arn" {
  description = "ARN of the Lambda to notify (its invoke permission for S3 must already exist)."
  type        = string
}

variable "deny_insecure_transport" {
  description = "Bucket policy denying requests without TLS (off only for a plain-HTTP emulator)."
  type        = bool
  default     = true
}
