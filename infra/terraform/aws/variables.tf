# Inputs of the Gaudi node group. Every variable says what it is for; the
# tests in tests/test_infra.py fail on an undocumented one.

variable "cluster_name" {
  description = "Name of this node group. Tags every resource (gaudi_nb_cluster) and scopes the node's IAM permissions."
  type        = string
  default     = "gaudi-nb"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,38}[a-z0-9]$", var.cluster_name))
    error_message = "cluster_name: 3-40 characters, lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "owner" {
  description = "Who answers for these nodes and their bill (an e-mail or a team name); goes into the owner tag."
  type        = string

  validation {
    condition     = length(trimspace(var.owner)) > 0
    error_message = "owner must not be empty: every node needs someone who answers for its cost."
  }
}

variable "project" {
  description = "Value of the project tag on every resource (for cost allocation)."
  type        = string
  default     = "gaudi_nb"
}

variable "extra_tags" {
  description = "More tags to put on every resource, merged under the required project, owner and gaudi_nb_cluster tags."
  type        = map(string)
  default     = {}
}

variable "region" {
  description = "AWS region of the nodes. dl1.24xlarge is offered in us-east-1 and us-west-2."
  type        = string
  default     = "us-west-2"
}

variable "availability_zone" {
  description = "Availability zone for the subnet this module creates (ignored with subnet_id). null lets AWS choose; pick one that has capacity for instance_type."
  type        = string
  default     = null
}

variable "instance_type" {
  description = "EC2 instance type of each node. dl1.24xlarge carries 8 first-generation Gaudi cards (the only Gaudi type on AWS): first-generation Gaudi (HL-205, AWS dl1.24xlarge) is pinned to Gaudi software 1.21, the last release that supports it: Intel's support matrix leaves it out from 1.22 on, so gaudi_nb refuses to run on it with anything newer."
  type        = string
  default     = "dl1.24xlarge"
}

variable "instance_count" {
  description = "How many nodes to start. Several nodes train together over EFA inside one cluster placement group."
  type        = number
  default     = 1

  validation {
    condition     = var.instance_count >= 1 && var.instance_count <= 64 && floor(var.instance_count) == var.instance_count
    error_message = "instance_count must be a whole number from 1 to 64."
  }
}

variable "ami_id" {
  description = "Machine image of the nodes. null picks the newest AWS Deep Learning AMI for Habana (Gaudi driver, container runtime and PyTorch preinstalled) in the region."
  type        = string
  default     = null
}

variable "ami_name_filter" {
  description = "Name pattern used to find the image when ami_id is null (Amazon-owned images only); the same as gaudi-nb nodes provision aws. That AWS publishes a Habana DLAMI with Gaudi software 1.21 could not be confirmed (none for Ubuntu 22.04 was found): if none matches, set ami_id."
  type        = string
  default     = "*Deep Learning AMI Habana PyTorch*SynapseAI*(Ubuntu*"
}

variable "ami_name_regex" {
  description = "The first-generation pin on the image's name: SynapseAI 1.21 or older (first-generation Gaudi (HL-205, AWS dl1.24xlarge) is pinned to Gaudi software 1.21, the last release that supports it: Intel's support matrix leaves it out from 1.22 on, so gaudi_nb refuses to run on it with anything newer); the same as gaudi-nb nodes provision aws."
  type        = string
  default     = "SynapseAI (0|1\\.([0-9]|1[0-9]|2[01]))\\."
}

variable "ssh_user" {
  description = "Login user of the image; part of the ssh:// targets gaudi-nb attaches to (ubuntu on the Ubuntu Deep Learning AMIs)."
  type        = string
  default     = "ubuntu"
}

variable "key_name" {
  description = "Name of an existing EC2 key pair whose private key you hold; gaudi-nb connects over SSH with it."
  type        = string
}

variable "allowed_ssh_cidr" {
  description = "The one CIDR block allowed to reach the nodes on port 22, e.g. your office or VPN egress (\"203.0.113.7/32\"). The whole internet is refused."
  type        = string

  validation {
    condition     = can(cidrhost(var.allowed_ssh_cidr, 0))
    error_message = "allowed_ssh_cidr must be an IPv4 CIDR block such as 203.0.113.7/32."
  }

  validation {
    condition     = !contains(["0.0.0.0/0", "::/0"], trimspace(var.allowed_ssh_cidr))
    error_message = "allowed_ssh_cidr must not be 0.0.0.0/0: open SSH to your own address (curl https://checkip.amazonaws.com, then add /32)."
  }
}

variable "ssh_port" {
  description = "TCP port of sshd on the nodes (the security group opens only this one from allowed_ssh_cidr)."
  type        = number
  default     = 22
}

variable "vpc_id" {
  description = "An existing VPC to place the nodes in. null creates a VPC, an internet gateway, a route table and a subnet for this node group."
  type        = string
  default     = null
}

variable "subnet_id" {
  description = "An existing subnet (in vpc_id) for the nodes. Required when vpc_id is set; ignored otherwise."
  type        = string
  default     = null
}

variable "vpc_cidr" {
  description = "Address range of the VPC this module creates (only when vpc_id is null)."
  type        = string
  default     = "10.42.0.0/16"
}

variable "subnet_cidr" {
  description = "Address range of the subnet this module creates (only when vpc_id is null); must lie inside vpc_cidr."
  type        = string
  default     = "10.42.0.0/20"
}

variable "assign_public_ip" {
  description = "Give each node an Elastic IP so gaudi-nb can reach it from your laptop. Set false when you reach the subnet over a VPN or a bastion."
  type        = bool
  default     = true
}

variable "efa_enabled" {
  description = "Attach the primary network interface as EFA (Elastic Fabric Adapter) for fast multi-node collectives. null turns it on for the instance types known to support EFA (dl1.24xlarge among them)."
  type        = bool
  default     = null
}

variable "root_volume_size_gb" {
  description = "Size of each node's root disk in GiB: the image, Hugging Face caches, checkpoints and run folders live here."
  type        = number
  default     = 500
}

variable "root_volume_type" {
  description = "EBS volume type of the root disk."
  type        = string
  default     = "gp3"
}

variable "autostop_idle_minutes" {
  description = "Written to /etc/gaudi-nb/autostop on each node for gaudi-nb's autostop: stop the node after this many idle minutes. 0 disables it."
  type        = number
  default     = 60
}
