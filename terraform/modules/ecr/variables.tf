variable "name_prefix" {
  description = "Prefix of the repository names (<prefix>/<repository>)."
  type        = string
}

variable "repositories" {
  description = "Short names of the repositories."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key encrypting the images."
  type        = string
}

variable "keep_images" {
  description = "Number of images kept per repository."
  type        = number
  default     = 20
}

variable "untagged_expiry_days" {
  description = "Days after which untagged images expire."
  type        = number
  default     = 7
}

variable "force_delete" {
  description = "Delete repositories that still contain images on destroy."
  type        = bool
  default     = true
}
