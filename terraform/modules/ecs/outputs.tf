output "cluster_name" {
  description = "Name of the cluster."
  value       = aws_ecs_cluster.this.name
}

output "cluster_arn" {
  description = "ARN of the cluster."
  value       = aws_ecs_cluster.this.arn
}

output "service_names" {
  description = "Service name per key."
  value       = { for k, s in aws_ecs_service.service : k => s.name }
}

output "task_definition_arns" {
  description = "Task definition ARN per service."
  value       = { for k, t in aws_ecs_task_definition.service : k => t.arn }
}

output "task_role_arns" {
  description = "Task role ARN per service."
  value       = { for k, r in aws_iam_role.task : k => r.arn }
}

output "security_group_ids" {
  description = "Security group per service and one-off task."
  value       = { for k, g in aws_security_group.service : k => g.id }
}

output "internal_urls" {
  description = "Service-discovery base URL per service with a port."
  value       = { for k, s in local.discoverable : k => "http://${k}.${local.namespace}:${s.port}" }
}

output "namespace" {
  description = "Private DNS namespace of the services."
  value       = local.namespace
}

output "exec_log_group_name" {
  description = "Log group of the ECS Exec sessions."
  value       = aws_cloudwatch_log_group.exec.name
}
