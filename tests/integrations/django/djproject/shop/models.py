from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=50)
    stock = models.IntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)


class Order(models.Model):
    item = models.ForeignKey(Item, on_delete=models.CASCADE)
    note = models.CharField(max_length=50, default="")
