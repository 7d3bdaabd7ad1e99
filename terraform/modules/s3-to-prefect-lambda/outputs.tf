output "function_name" {
  description = "Name of the function."
  value       = aws_lambda_function.this.function_name
}

output "function_arn" {
  description = "ARN of the function, available once S3 may invoke it (use it for the bucket notification)."
  value       = aws_lambda_function.this.arn
  depends_on  = [aws_lambda_permission.s3]
}

output "role_arn" {
  description = "ARN of the function's role."
  value       = aws_iam_role.lambda.arn
}

output "security_group_id" {
  description = "Security group of the function (allow it into the Prefect API's port)."
  value       = aws_security_group.lambda.id
}

output "failure_queue_url" {
  description = "SQS queue holding the invocations that failed after their retries."
  value       = aws_sqs_queue.failures.url
}

output "alarm_names" {
  description = "CloudWatch alarms of the trigger (failure-queue depth, function errors)."
  value       = [aws_cloudwatch_metric_alarm.failures.alarm_name, aws_cloudwatch_metric_alarm.errors.alarm_name]
}
