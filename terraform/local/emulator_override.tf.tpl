# Used only against an emulator (moto on loopback). terraform/scripts/tf_local.py
# copies the root module to a scratch directory and writes this file there as
# emulator_override.tf, with @ENDPOINT@ replaced by the emulator's URL.
# It is never placed in terraform/ itself.

terraform {
  backend "local" {}
}

provider "aws" {
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true

  endpoints {
    appautoscaling   = "@ENDPOINT@"
    cloudwatch       = "@ENDPOINT@"
    cloudwatchlogs   = "@ENDPOINT@"
    cognitoidp       = "@ENDPOINT@"
    ec2              = "@ENDPOINT@"
    ecr              = "@ENDPOINT@"
    ecs              = "@ENDPOINT@"
    events           = "@ENDPOINT@"
    efs              = "@ENDPOINT@"
    elbv2            = "@ENDPOINT@"
    iam              = "@ENDPOINT@"
    kms              = "@ENDPOINT@"
    lambda           = "@ENDPOINT@"
    rds              = "@ENDPOINT@"
    s3               = "@ENDPOINT@"
    secretsmanager   = "@ENDPOINT@"
    servicediscovery = "@ENDPOINT@"
    sns              = "@ENDPOINT@"
    sqs              = "@ENDPOINT@"
    sts              = "@ENDPOINT@"
  }
}
