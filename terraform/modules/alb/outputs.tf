output "dns_name" {
  description = "DNS name of the load balancer (point each <host>.<domain> at it)."
  value       = aws_lb.this.dns_name
}

output "zone_id" {
  description = "Route 53 zone of the load balancer's DNS name (for alias records)."
  value       = aws_lb.this.zone_id
}

output "arn" {
  description = "ARN of the load balancer."
  value       = aws_lb.this.arn
}

output "security_group_id" {
  description = "Security group of the load balancer."
  value       = aws_security_group.alb.id
}

output "target_group_arns" {
  description = "Target group ARN per UI the load balancer forwards to (empty when it forwards nothing)."
  value       = { for k, tg in aws_lb_target_group.this : k => tg.arn }
  # A target group can serve an ECS service only once a listener forwards to it.
  depends_on = [aws_lb_listener_rule.ui]
}

output "urls" {
  description = "URL per UI through the load balancer (empty when it forwards nothing)."
  value       = { for k, host in local.hosts : k => "https://${host}" }
}

output "hosts" {
  description = "Host name per UI (empty when the load balancer forwards nothing)."
  value       = local.hosts
}

output "cognito_user_pool_id" {
  description = "Cognito user pool of the UI users (null unless authentication = cognito)."
  value       = one(aws_cognito_user_pool.ui[*].id)
}
