variable "topic_name" {
  description = "Name of the alerts topic."
  type        = string
}

variable "email" {
  description = "E-mail address subscribed to the topic."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key encrypting the topic."
  type        = string
}
