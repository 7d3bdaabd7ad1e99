output "dns_name" {
  description = "DNS name of the load balancer."
  value       = aws_lb.this.dns_name
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
  description = "Target group ARN per UI."
  value       = { for k, tg in aws_lb_target_group.this : k => tg.arn }
  # A target group can serve an ECS service only once a listener forwards to it.
  depends_on = [aws_lb_listener.this]
}

output "urls" {
  description = "URL per UI."
  value       = { for k, l in var.listeners : k => "${local.scheme}://${aws_lb.this.dns_name}:${l.port}" }
}
