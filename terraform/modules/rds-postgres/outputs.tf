output "address" {
  description = "Host name of the instance."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "Port of the instance."
  value       = aws_db_instance.this.port
}

output "instance_id" {
  description = "Identifier of the instance."
  value       = aws_db_instance.this.identifier
}

output "security_group_id" {
  description = "Security group of the instance."
  value       = aws_security_group.db.id
}

output "master_secret_arn" {
  description = "The RDS-managed secret of the master user (JSON: username, password)."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "initial_database" {
  description = "Database created with the instance (the administrator's connection)."
  value       = aws_db_instance.this.db_name
}

output "roles" {
  description = "Per key of var.roles: its name, kind, database and the ARN of its secret (JSON: username, password, host, port, dbname, url)."
  value = {
    for k, r in var.roles : k => merge(r, { secret_arn = aws_secretsmanager_secret.role[k].arn })
  }
}
