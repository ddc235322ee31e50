# A group of Gaudi nodes on EC2 that gaudi-nb attaches to over SSH.

provider "aws" {
  region = var.region

  # Every resource the provider creates carries the required tags, including
  # those (EIPs, root volumes) where a module author forgets them. The tags
  # blocks below repeat them so that `terraform plan` shows them and the
  # repository's tests can check them resource by resource.
  default_tags {
    tags = local.required_tags
  }
}

locals {
  required_tags = {
    project          = var.project
    owner            = var.owner
    gaudi_nb_cluster = var.cluster_name
  }
  # Required tags win over extra_tags: cost reports and the IAM condition
  # below rely on them.
  tags = merge(var.extra_tags, local.required_tags)

  # Instance types with EFA. dl1.24xlarge supports it (4 network cards); the
  # others are here so the same module can start GPU nodes for comparison.
  efa_instance_types = [
    "dl1.24xlarge",
    "p4d.24xlarge",
    "p4de.24xlarge",
    "p5.48xlarge",
    "p5e.48xlarge",
    "trn1.32xlarge",
    "trn1n.32xlarge",
  ]
  efa = var.efa_enabled != null ? var.efa_enabled : contains(local.efa_instance_types, var.instance_type)

  create_vpc = var.vpc_id == null
  vpc_id     = local.create_vpc ? aws_vpc.this[0].id : var.vpc_id
  subnet_id  = local.create_vpc ? aws_subnet.this[0].id : var.subnet_id
  ami_id     = var.ami_id != null ? var.ami_id : data.aws_ami.habana[0].id
}

data "aws_ami" "habana" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["amazon"]
  name_regex  = var.ami_name_regex # SynapseAI 1.21 or older: the first-generation pin

  filter {
    name   = "name"
    values = [var.ami_name_filter]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

# ---------------------------------------------------------------- network ----

resource "aws_vpc" "this" {
  count                = local.create_vpc ? 1 : 0
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = "${var.cluster_name}-vpc" })
}

resource "aws_internet_gateway" "this" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = "${var.cluster_name}-igw" })
}

resource "aws_subnet" "this" {
  count             = local.create_vpc ? 1 : 0
  vpc_id            = aws_vpc.this[0].id
  cidr_block        = var.subnet_cidr
  availability_zone = var.availability_zone
  # Nodes get Elastic IPs on purpose (assign_public_ip), never by accident.
  map_public_ip_on_launch = false
  tags                    = merge(local.tags, { Name = "${var.cluster_name}-subnet" })
}

resource "aws_route_table" "this" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this[0].id
  }

  tags = merge(local.tags, { Name = "${var.cluster_name}-rt" })
}

resource "aws_route_table_association" "this" {
  count          = local.create_vpc ? 1 : 0
  subnet_id      = aws_subnet.this[0].id
  route_table_id = aws_route_table.this[0].id
}

# ---------------------------------------------------------------- security --

resource "aws_security_group" "node" {
  name_prefix = "${var.cluster_name}-"
  description = "gaudi-nb ${var.cluster_name}: SSH from one CIDR, all traffic between the nodes (EFA needs it)"
  vpc_id      = local.vpc_id
  tags        = merge(local.tags, { Name = "${var.cluster_name}-nodes" })

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = var.vpc_id == null || var.subnet_id != null
      error_message = "subnet_id is required when vpc_id is set: name the subnet the nodes go in."
    }
  }
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  security_group_id = aws_security_group.node.id
  description       = "SSH from the operator's network only"
  ip_protocol       = "tcp"
  from_port         = var.ssh_port
  to_port           = var.ssh_port
  cidr_ipv4         = var.allowed_ssh_cidr
  tags              = local.tags
}

# EFA requires the group to admit all traffic from itself and send all
# traffic to itself; collectives (HCCL, MPI, gloo) also use arbitrary ports.
resource "aws_vpc_security_group_ingress_rule" "within_group" {
  security_group_id            = aws_security_group.node.id
  description                  = "All traffic between nodes of this group"
  ip_protocol                  = "-1"
  referenced_security_group_id = aws_security_group.node.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "within_group" {
  security_group_id            = aws_security_group.node.id
  description                  = "All traffic between nodes of this group"
  ip_protocol                  = "-1"
  referenced_security_group_id = aws_security_group.node.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "internet" {
  security_group_id = aws_security_group.node.id
  description       = "Outbound: packages, model and data set downloads, the EC2 API for autostop"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

# ---------------------------------------------------------------- IAM -------

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name_prefix        = "${var.cluster_name}-node-"
  description        = "gaudi-nb node of ${var.cluster_name}: may stop itself and nothing else"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = local.tags
}

# Autostop runs on the node (not on the laptop, which may be
# asleep) and calls ec2:StopInstances on its own instance when the node is
# idle or over budget. One role serves every node of the group, so the policy
# cannot name an instance id: listing the group's ids would let any node stop
# all of them. Instead the resource is the policy variable
# ${ec2:SourceInstanceARN}, which IAM resolves on each request to the ARN of
# the instance whose role credentials signed it (a documented EC2 condition
# key, present only for instance-profile credentials). A node can therefore
# stop only itself; credentials copied off the node carry no source instance
# and match nothing. The tag condition adds that the instance must also belong
# to this cluster. (The widely copied `aws:ARN` = `${ec2:SourceInstanceARN}`
# condition is undocumented, so it is not used.) "$$" is Terraform's escape
# for a literal "$".
data "aws_iam_policy_document" "stop_self" {
  statement {
    sid       = "StopOnlyThisInstance"
    effect    = "Allow"
    actions   = ["ec2:StopInstances"]
    resources = ["$${ec2:SourceInstanceARN}"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/gaudi_nb_cluster"
      values   = [var.cluster_name]
    }
  }
}

resource "aws_iam_role_policy" "stop_self" {
  name   = "gaudi-nb-stop-self"
  role   = aws_iam_role.node.id
  policy = data.aws_iam_policy_document.stop_self.json
}

resource "aws_iam_instance_profile" "node" {
  name_prefix = "${var.cluster_name}-node-"
  role        = aws_iam_role.node.name
  tags        = local.tags
}

# ---------------------------------------------------------------- nodes -----

# Nodes that train together sit close together: low latency, full EFA
# bandwidth. A cluster placement group lives in one availability zone.
resource "aws_placement_group" "node" {
  name     = "${var.cluster_name}-pg"
  strategy = "cluster"
  tags     = local.tags
}

resource "aws_network_interface" "node" {
  count           = var.instance_count
  subnet_id       = local.subnet_id
  security_groups = [aws_security_group.node.id]
  # EFA keeps ordinary IP traffic (SSH, the event stream) working and adds the
  # OS-bypass path that libfabric uses for collectives.
  interface_type = local.efa ? "efa" : null
  description    = "gaudi-nb ${var.cluster_name} node ${count.index}"
  tags           = merge(local.tags, { Name = "${var.cluster_name}-node-${count.index}" })
}

resource "aws_instance" "node" {
  count                = var.instance_count
  ami                  = local.ami_id
  instance_type        = var.instance_type
  key_name             = var.key_name
  placement_group      = aws_placement_group.node.id
  iam_instance_profile = aws_iam_instance_profile.node.name

  # Stop (not terminate) when the OS shuts down, so an autostop `shutdown`
  # keeps the disk with its checkpoints.
  instance_initiated_shutdown_behavior = "stop"

  network_interface {
    network_interface_id = aws_network_interface.node[count.index].id
    device_index         = 0
  }

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
    # 2 hops so that a container on the node (the Gaudi image) reaches IMDS.
    http_put_response_hop_limit = 2
    instance_metadata_tags      = "enabled"
  }

  root_block_device {
    volume_size           = var.root_volume_size_gb
    volume_type           = var.root_volume_type
    encrypted             = true
    delete_on_termination = true
    tags                  = merge(local.tags, { Name = "${var.cluster_name}-node-${count.index}" })
  }

  # What the node-side agent reads: its cluster, region and autostop policy.
  user_data = <<-EOT
    #!/bin/bash
    set -eu
    mkdir -p /etc/gaudi-nb
    printf '%s\n' '${var.cluster_name}' > /etc/gaudi-nb/cluster
    printf '%s\n' '${var.region}' > /etc/gaudi-nb/region
    printf '%s\n' '${var.autostop_idle_minutes}' > /etc/gaudi-nb/autostop_idle_minutes
    # pdsh: DeepSpeed's launcher starts the other nodes of a multi-node run through it (best effort)
    (apt-get update && apt-get install -y pdsh) >/var/log/gaudi-nb-first-boot.log 2>&1 || true
  EOT

  tags = merge(local.tags, { Name = "${var.cluster_name}-node-${count.index}" })

  lifecycle {
    ignore_changes = [ami]
  }
}

resource "aws_eip" "node" {
  count             = var.assign_public_ip ? var.instance_count : 0
  domain            = "vpc"
  network_interface = aws_network_interface.node[count.index].id
  tags              = merge(local.tags, { Name = "${var.cluster_name}-node-${count.index}" })

  depends_on = [aws_internet_gateway.this, aws_instance.node]
}
