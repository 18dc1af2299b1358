"""``{% load money %}{% money amount currency %}`` → "LKR 12,500.00" in the currency's minor units."""

from django import template

from payments.money import format_money

register = template.Library()


@register.simple_tag
def money(amount, currency):
    return format_money(amount, currency)
