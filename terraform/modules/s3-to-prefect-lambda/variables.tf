variable "function_name" {
  description = "Name of the function."
  type        = string
}

variable "image_uri" {
  description = "ECR image URI (repository:tag) of the function."
  type        = string
}

variable "prefect_api_url" {
  description = "Prefect API URL (PREFECT_API_URL)."
  type        = string
}

variable "prefect_deployment" {
  description = "Deployment to run, <flow>/<deployment> (PREFECT_DEPLOYMENT)."
  type        = string
  default     = "churn_prediction_pipeline/churnops"
}

variable "input_prefix" {
  description = "Prefix of the input files (INPUT_PREFIX)."
  type        = string
  default     = "data/input/"
}

variable "extra_environment" {
  description = "Further non-secret environment variables."
  type        = map(string)
  default     = {}
}

variable "bucket_arn" {
  description = "ARN of the bucket allowed to invoke the function."
  type        = string
}

variable "bucket_account_id" {
  description = "Account owning the bucket."
  type        = string
}

variable "timeout" {
  description = "Timeout in seconds."
  type        = number
  default     = 30
}

variable "memory_size" {
  description = "Memory in MiB."
  type        = number
  default     = 256
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions."
  type        = number
  default     = 5
}

variable "log_retention_days" {
  description = "Retention of the function's log group."
  type        = number
  default     = 365
}

variable "kms_key_arn" {
  description = "KMS key encrypting the log group."
  type        = string
}
