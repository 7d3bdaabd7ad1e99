"""The AWS rehearsal (`make rehearse-aws`): the applied module's ECS tasks and Lambda,
run as local processes against moto and a local Postgres. See ../rehearse.py."""
