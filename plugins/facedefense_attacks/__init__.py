"""Built-in attacks: personalizers (DreamBooth, LoRA, textual inversion, LoRA+TI) and editors
(InstructPix2Pix, SDEdit, inpainting) on diffusers Stable Diffusion models.

Importing this package is cheap: torch and diffusers load when a method runs.
"""
