terraform {
  # 1.11: write-only arguments (secret_string_wo) and ephemeral resources.
  required_version = ">= 1.11"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }

  # Partial configuration: bucket, key, region (and optionally dynamodb_table
  # or use_lockfile) come from `terraform init -backend-config=vars/<env>.backend.tfvars`.
  # See vars/backend.tfvars.template. Nothing here is tied to one account.
  backend "s3" {}
}
