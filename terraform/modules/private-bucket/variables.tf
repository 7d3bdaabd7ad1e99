variable "name" {
  description = "Bucket name."
  type        = string
}

variable "force_destroy" {
  description = "Allow destroying the bucket with objects in it."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "KMS key of the default encryption (SSE-KMS, with a bucket key); null: SSE-S3."
  type        = string
  default     = null
}

variable "policy_documents" {
  description = "IAM policy documents (JSON) whose statements the bucket policy holds."
  type        = list(string)
  default     = []
}

variable "deny_insecure_transport" {
  description = "Add a statement denying every request not made over TLS."
  type        = bool
  default     = true
}
