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
