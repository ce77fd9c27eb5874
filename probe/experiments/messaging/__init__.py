"""The messaging-app experiments (signal, telegram, whatsapp, facebook_messenger), after OONI's
ts-029, ts-020, ts-018 and ts-019: each app's endpoints, by function (registration, messaging,
web), come from an updatable list (endpoints.py); base.py measures them; the analyzer decides.
"""
