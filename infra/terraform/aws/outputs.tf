# What gaudi-nb needs to attach to the nodes (see README.md: the hand-off).

locals {
  reach_ips   = var.assign_public_ip ? aws_eip.node[*].public_ip : aws_instance.node[*].private_ip
  port_suffix = var.ssh_port == 22 ? "" : ":${var.ssh_port}"
}

output "targets" {
  description = "One SSH address per node, ssh://USER@IP[:PORT]; attach one with `gaudi-nb nodes attach ADDRESS --name NAME` or %gaudi_attach, then train with --target NAME."
  value       = [for ip in local.reach_ips : "ssh://${var.ssh_user}@${ip}${local.port_suffix}"]
}

output "instance_ids" {
  description = "EC2 instance ids of the nodes, in node order."
  value       = aws_instance.node[*].id
}

output "public_ips" {
  description = "Elastic IPs of the nodes (empty when assign_public_ip is false)."
  value       = aws_eip.node[*].public_ip
}

output "private_ips" {
  description = "Private IPs of the nodes, in node order; the first is the rendezvous address for multi-node runs."
  value       = aws_instance.node[*].private_ip
}

output "ssh_user" {
  description = "Login user of the nodes."
  value       = var.ssh_user
}

output "region" {
  description = "AWS region of the nodes."
  value       = var.region
}

output "instance_type" {
  description = "Instance type of the nodes; gaudi-nb looks its price up in the catalog."
  value       = var.instance_type
}

output "cluster_name" {
  description = "Value of the gaudi_nb_cluster tag on every resource."
  value       = var.cluster_name
}

output "security_group_id" {
  description = "Security group of the nodes."
  value       = aws_security_group.node.id
}

output "placement_group" {
  description = "Cluster placement group of the nodes."
  value       = aws_placement_group.node.name
}

output "efa_enabled" {
  description = "Whether the nodes' primary interfaces are EFA."
  value       = local.efa
}

output "gaudi_nb_train_command" {
  description = "Commands that attach the first node (as node-0) and train on it with all its devices."
  value       = length(local.reach_ips) == 0 ? null : "gaudi-nb nodes attach ssh://${var.ssh_user}@${local.reach_ips[0]}${local.port_suffix} --name node-0 --trust-new-host && gaudi-nb train --target node-0 --devices 8 --instance-type ${var.instance_type}"
}
