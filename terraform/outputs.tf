output "aws_region" {
  description = "Region of the platform."
  value       = local.region
}

output "mlflow_url" {
  description = "MLflow UI: https://mlflow.<ui_domain> after sign-in, or http://localhost:5000 through `make tunnel SERVICE=mlflow`."
  value       = local.public_urls.mlflow
}

output "prefect_ui_url" {
  description = "Prefect UI URL."
  value       = local.public_urls["prefect-server"]
}

output "prefect_api_url" {
  description = "Prefect API URL (PREFECT_API_URL) for the CLI on this machine, through `make tunnel SERVICE=prefect-server` (the load balancer signs in browsers only); PREFECT_API_AUTH_STRING from the secret prefect_auth_secret_arn."
  value       = local.prefect_api_url_tunnel
}

output "evidently_url" {
  description = "Evidently UI URL."
  value       = local.public_urls.evidently
}

output "grafana_url" {
  description = "Grafana URL."
  value       = local.public_urls.grafana
}

output "ui_urls" {
  description = "Every UI URL by service (through the load balancer after sign-in, else through `make tunnel`)."
  value       = local.public_urls
}

output "ui_hosts" {
  description = "Host name per UI to point at load_balancer_dns_name (done for you with route53_zone_id); empty when the load balancer forwards nothing."
  value       = module.alb.hosts
}

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer."
  value       = module.alb.dns_name
}

output "cognito_user_pool_id" {
  description = "Cognito user pool of the UI users (add users with ui_users or the console); null with OIDC or without HTTPS."
  value       = module.alb.cognito_user_pool_id
}

output "prefect_auth_secret_arn" {
  description = "ARN (not the value) of the secret holding the Prefect API auth string (<user>:<pass>) that the UI asks for."
  value       = aws_secretsmanager_secret.credentials["prefect"].arn
}

output "mlflow_auth_secret_arn" {
  description = "ARN (not the value) of the secret holding MLflow's basic-auth login (JSON: the username and its secret)."
  value       = aws_secretsmanager_secret.credentials["mlflow"].arn
}

output "evidently_secret_arn" {
  description = "ARN (not the value) of the secret the Evidently UI requires for writes."
  value       = aws_secretsmanager_secret.credentials["evidently"].arn
}

output "internal_urls" {
  description = "Service-discovery URLs used inside the VPC."
  value       = local.internal_urls
}

output "bucket_name" {
  description = "Drop bucket; customer CSVs go under data/input/."
  value       = module.s3.bucket_name
}

output "alerts_topic_arn" {
  description = "SNS topic of the alerts."
  value       = module.sns.topic_arn
}

output "lambda_function_name" {
  description = "The S3-to-Prefect Lambda."
  value       = module.lambda.function_name
}

output "lambda_failure_queue_url" {
  description = "SQS queue of the trigger's invocations that failed after their retries (alarmed)."
  value       = module.lambda.failure_queue_url
}

output "lambda_enabled" {
  description = "Whether data/input/ uploads trigger the Lambda."
  value       = var.lambda_enabled
}

output "ecr_repository_urls" {
  description = "ECR repository URL per image."
  value       = module.ecr.repository_urls
}

output "ecs_cluster_name" {
  description = "ECS cluster."
  value       = module.ecs.cluster_name
}

output "ecs_service_names" {
  description = "ECS service name per key."
  value       = module.ecs.service_names
}

output "db_instance_id" {
  description = "RDS instance identifier."
  value       = module.rds.instance_id
}

output "database_url_secret_arn" {
  description = "ARN (not the value) of the flow's database secret (JSON; its url is the worker's DATABASE_URL, as the flow's writer role)."
  value       = module.rds.roles.flow.secret_arn
}

output "db_master_secret_arn" {
  description = "ARN (not the value) of the RDS-managed secret of the master user."
  value       = module.rds.master_secret_arn
}

output "evidently_file_system_id" {
  description = "EFS file system holding the Evidently workspace."
  value       = aws_efs_file_system.evidently.id
}

output "grafana_admin_secret_arn" {
  description = "ARN (not the value) of the secret holding Grafana's admin password."
  value       = aws_secretsmanager_secret.grafana_admin.arn
}

output "deployments_task" {
  description = "How `make apply` registers the Prefect deployments from inside the VPC: a one-off task of the worker's task definition (its network, role and secrets) running `command` in `container`."
  value = {
    cluster          = module.ecs.cluster_name
    task_definition  = module.ecs.task_definition_arns["worker"]
    container        = "worker"
    command          = ["python", "-m", "churnops.platform.deployments"]
    subnets          = local.task_subnet_ids
    security_groups  = [module.ecs.security_group_ids["worker"]]
    assign_public_ip = local.public_tasks
  }
}

output "db_bootstrap_task" {
  description = "How `make apply` bootstraps the database (post_apply.py database): the one-off task db-init, with its own roles and network, as the RDS master user; its own command."
  value = {
    cluster          = module.ecs.cluster_name
    task_definition  = module.ecs.task_definition_arns["db-init"]
    container        = "db-init"
    subnets          = local.task_subnet_ids
    security_groups  = [module.ecs.security_group_ids["db-init"]]
    assign_public_ip = local.public_tasks
  }
}

output "ops_metrics_namespace" {
  description = "CloudWatch namespace of ChurnOps' operational metrics (file ages, failed and queued flow runs)."
  value       = local.ops_metrics_namespace
}

output "prefect_deployment" {
  description = "Deployment the Lambda runs."
  value       = local.pipeline_deployment
}

output "image_tag" {
  description = "Image tag deployed."
  value       = var.image_tag
}

output "tunnel_operator_policy_arn" {
  description = "IAM policy to attach to the people who may run `make tunnel` (port forwarding only; null when tunnel_enabled is false)."
  value       = one(aws_iam_policy.tunnel_operator[*].arn)
}

output "github_role_arns" {
  description = "The OIDC roles of the workflows (repository secrets AWS_PLAN_ROLE_ARN and AWS_PUSH_ROLE_ARN, the environment's AWS_DEPLOY_ROLE_ARN); empty without github_repository."
  value       = { for k, r in aws_iam_role.github : k => r.arn }
}
