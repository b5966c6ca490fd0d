"""The paper's V and M in PyTorch, with dreamgym's parameter names and layouts, so the same
safetensors checkpoint loads into both (used by the parity and speed scripts)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Vae(nn.Module):
    def __init__(self, z=32, enc=(32, 64, 128, 256), k=4, dense=1024, dec=(128, 64, 32),
                 dec_k=(5, 5, 6, 6), channels=3, image=64, kl_tolerance=0.5):
        super().__init__()
        self.z, self.dense, self.kl_tolerance = z, dense, kl_tolerance
        layers, cin, side = [], channels, image
        for c in enc:
            layers.append(nn.Conv2d(cin, c, k, stride=2))
            cin, side = c, (side - k) // 2 + 1
        self.encoder = nn.ModuleList(layers)
        self.mu = nn.Linear(cin * side * side, z)
        self.logvar = nn.Linear(cin * side * side, z)
        self.decoder_input = nn.Linear(z, dense)
        outs = list(dec) + [channels]
        layers, cin = [], dense
        for c, kk in zip(outs, dec_k):
            layers.append(nn.ConvTranspose2d(cin, c, kk, stride=2))
            cin = c
        self.decoder = nn.ModuleList(layers)

    def encode(self, x):  # x: NCHW
        for conv in self.encoder:
            x = F.relu(conv(x))
        x = x.flatten(1)
        return self.mu(x), self.logvar(x)

    def decode(self, z):
        x = self.decoder_input(z).view(-1, self.dense, 1, 1)
        for i, conv in enumerate(self.decoder):
            x = conv(x)
            x = torch.sigmoid(x) if i == len(self.decoder) - 1 else F.relu(x)
        return x

    def loss(self, x, eps):
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        y = self.decode(z)
        recon = (y - x).pow(2).flatten(1).sum(1).mean()
        kl = 0.5 * (logvar.exp() + mu.pow(2) - logvar - 1.0).sum(1)
        kl = torch.clamp(kl, min=self.kl_tolerance * self.z).mean()
        return recon + kl, recon, kl


class MdnRnn(nn.Module):
    def __init__(self, z=32, actions=3, hidden=256, mixtures=5, reward_head=True, done_head=True,
                 reward_weight=1.0, done_weight=1.0):
        super().__init__()
        self.z, self.k = z, mixtures
        self.reward_weight, self.done_weight = reward_weight, done_weight
        self.lstm = nn.LSTM(z + actions, hidden, batch_first=True)
        self.mdn = nn.Linear(hidden, z * mixtures * 3)
        self.reward = nn.Linear(hidden, 1) if reward_head else None
        self.done = nn.Linear(hidden, 1) if done_head else None

    def load_dreamgym(self, tensors):
        """dreamgym names the LSTM's tensors lstm.weight_ih etc.; PyTorch adds _l0."""
        renamed = {}
        for k, v in tensors.items():
            if k.startswith("lstm."):
                k = k + "_l0"
            renamed[k] = v
        self.load_state_dict(renamed)

    def loss(self, z, actions, rewards, dones):
        b, t1, zs = z.shape
        t = t1 - 1
        hs, _ = self.lstm(torch.cat([z[:, :t], actions], 2))
        hs = hs.reshape(b * t, -1)
        out = self.mdn(hs).view(b * t, zs, 3, self.k)
        logits, mu, log_sigma = out[:, :, 0], out[:, :, 1], out[:, :, 2]
        log_pi = logits - torch.logsumexp(logits, -1, keepdim=True)
        y = z[:, 1:].reshape(b * t, zs, 1)
        log_normal = -0.5 * ((y - mu) / log_sigma.exp()).pow(2) - log_sigma - 0.5 * math.log(2 * math.pi)
        z_nll = -torch.logsumexp(log_pi + log_normal, -1).mean()
        total = z_nll
        r_loss = torch.zeros(())
        d_loss = torch.zeros(())
        if self.reward is not None:
            r_loss = (self.reward(hs).squeeze(1) - rewards.reshape(-1)).pow(2).mean()
            total = total + self.reward_weight * r_loss
        if self.done is not None:
            d_loss = F.binary_cross_entropy_with_logits(self.done(hs).squeeze(1), dones.reshape(-1))
            total = total + self.done_weight * d_loss
        return total, z_nll, r_loss, d_loss
