variable "function_name" {
  description = "Name of the function."
  type        = string
}

variable "image_uri" {
  description = "ECR image URI (repository:tag) of the function."
  type        = string
}

variable "prefect_api_url" {
  description = "Prefect API URL (PREFECT_API_URL) inside the VPC."
  type        = string
}

variable "prefect_auth_secret_arn" {
  description = "Secrets Manager secret holding the Prefect API auth string (user:password); the function reads it, its environment holds only the ARN."
  type        = string
}

variable "prefect_security_group_id" {
  description = "Security group of the Prefect API tasks (the only destination besides Secrets Manager)."
  type        = string
}

variable "endpoint_client_security_group_ids" {
  description = "Further security groups allowed into the Secrets Manager endpoint (its private DNS sends every client in the VPC to it)."
  type        = list(string)
  default     = []
}

variable "prefect_port" {
  description = "Port of the Prefect API."
  type        = number
  default     = 4200
}

variable "vpc_id" {
  description = "VPC of the function."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the function (the private ones)."
  type        = list(string)
}

variable "region" {
  description = "Region (names the Secrets Manager endpoint service)."
  type        = string
}

variable "secretsmanager_endpoint" {
  description = "Create a Secrets Manager interface endpoint in the subnets (needed when they have no NAT route)."
  type        = bool
  default     = false
}

variable "alarm_topic_arn" {
  description = "SNS topic of the alarms (failure-queue depth, function errors)."
  type        = string
}

variable "maximum_event_age_seconds" {
  description = "How long S3's asynchronous events are retried before they go to the failure queue."
  type        = number
  default     = 21600
}

variable "prefect_deployment" {
  description = "Deployment to run, <flow>/<deployment> (PREFECT_DEPLOYMENT)."
  type        = string
  default     = "churn_prediction_pipeline/churnops"
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
