output "topic_arn" {
  description = "ARN of the alerts topic."
  value       = aws_sns_topic.alerts.arn
}

output "subscription_arn" {
  description = "ARN of the e-mail subscription (pending until confirmed)."
  value       = aws_sns_topic_subscription.email.arn
}
